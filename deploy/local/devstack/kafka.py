"""A single-node Apache Kafka broker in KRaft mode (broker and controller in one JVM).

All of its files live in one state directory: ``server.properties``, the log4j2 config, the
KRaft metadata and topic data (``data/``), ``logs/server.log``, ``kafka.out`` (JVM output) and
``kafka.pid``. Stopping and restarting keep ``data/``, so a restart finds its topics and offsets.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack import processes
from devstack.install import ensure_java, kafka_installed, kafka_libs_dir
from devstack.server import LocalServer
from services.common.topic_admin import all_led, wait_until_served

HOST = "127.0.0.1"
NODE_ID = 1
# The machine has two cores and runs the services beside the broker; Kafka's defaults assume a
# dedicated server. C1-only JIT and the serial collector cut start-up (and restart, in fault
# tests) to a third on a busy two-core machine, at a throughput cost a dev broker can afford.
LEAN_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
DEFAULT_JVM_OPTIONS = ("-Xms256m", "-Xmx512m", *LEAN_JVM)


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaStartError(RuntimeError):
    """The broker did not become ready; the message carries the end of its log."""


@dataclass(frozen=True)
class KafkaPorts:
    broker: int
    controller: int


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID, base64url without padding, as Kafka's own tool makes."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka refuses ids starting with '-' (they read as command-line flags).
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class OAuthValidation:
    """How the listener checks OAUTHBEARER tokens: signed by a key of the JWKS in ``jwks_file``, for
    ``audience``, from ``issuer`` (Kafka's own validator, as a cluster behind an identity provider
    runs it; a file instead of the provider's JWKS URL, so the broker starts without one)."""

    jwks_file: Path
    audience: str
    issuer: str

    @property
    def jwks_url(self) -> str:
        return self.jwks_file.resolve().as_uri()


@dataclass(frozen=True)
class SecuredListener:
    """A SASL_SSL listener beside the plaintext one: TLS with ``keystore`` (one PEM file: the
    server's PKCS#8 key, then its certificate chain), and sign-in with SASL/PLAIN as one of ``users``
    ((name, password) pairs), with SCRAM-SHA-256 or -512 as one of them too (their credentials are
    stored at format time), and, with ``oauth``, OAUTHBEARER. What a secured production cluster asks
    of Duplex's clients."""

    port: int
    keystore: Path
    users: tuple[tuple[str, str], ...]
    oauth: OAuthValidation | None = None

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return ("PLAIN", *SCRAM_MECHANISMS, *(("OAUTHBEARER",) if self.oauth else ()))

    def properties(self) -> dict[str, str]:
        users = " ".join(f'user_{name}="{password}"' for name, password in self.users)
        prefix = "listener.name.sasl_ssl"
        properties = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            f"{prefix}.sasl.enabled.mechanisms": ",".join(self.mechanisms),
            f"{prefix}.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            ),
        }
        for mechanism in SCRAM_MECHANISMS:
            properties[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if self.oauth is not None:
            properties |= {
                f"{prefix}.oauthbearer.sasl.jaas.config": (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
                ),
                f"{prefix}.oauthbearer.sasl.server.callback.handler.class": (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
                ),
                # Broker-wide, not under the listener: Kafka 4.1 reads these there. Its default
                # validator only parses a token, checking no signature, audience or issuer, so a
                # broker must name the one that does.
                "sasl.oauthbearer.jwt.validator.class": (
                    "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator"
                ),
                "sasl.oauthbearer.jwks.endpoint.url": self.oauth.jwks_url,
                "sasl.oauthbearer.expected.audience": self.oauth.audience,
                "sasl.oauthbearer.expected.issuer": self.oauth.issuer,
            }
        return properties

    def scram_credentials(self) -> tuple[str, ...]:
        """``kafka-storage format --add-scram`` arguments: every user, for both SCRAM mechanisms."""
        return tuple(
            f"{mechanism}=[name={name},password={password}]"
            for mechanism in SCRAM_MECHANISMS
            for name, password in self.users
        )

    def jvm_options(self) -> tuple[str, ...]:
        # Kafka fetches JWKS only from URLs this system property allows.
        return (
            () if self.oauth is None else (f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.oauth.jwks_url}",)
        )


def server_properties(ports: KafkaPorts, data_dir: Path, secured: SecuredListener | None = None) -> dict[str, str]:
    """The broker's configuration for one node on 127.0.0.1."""
    listeners = [f"PLAINTEXT://{HOST}:{ports.broker}"]
    if secured is not None:
        listeners.append(f"SASL_SSL://{HOST}:{secured.port}")
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{ports.controller}",
        "listeners": ",".join([*listeners, f"CONTROLLER://{HOST}:{ports.controller}"]),
        "advertised.listeners": ",".join(listeners),
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        **(secured.properties() if secured is not None else {}),
        "log.dirs": str(data_dir),
        # Topics come only from the topic table; a typo must fail, not create a stray topic.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        # 50 partitions (the default) is a lot of files and start-up work for one laptop broker.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests join and leave consumer groups constantly; the 3 s default delays each join.
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (SIGKILL in fault tests) the restarted broker cannot register until the
        # dead incarnation's session expires: 9 s by default.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def render_properties(properties: dict[str, str]) -> str:
    """Java .properties text; the values used here never need escaping beyond backslashes."""
    lines = ["# Written by devstack on every start; edit devstack/kafka.py instead."]
    lines += [f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def render_log4j2(log_file: Path) -> str:
    """A log4j2 config sending the broker's log to ``log_file`` (rolled at 50 MB, 3 kept)."""
    return "\n".join(
        [
            "status = warn",
            "name = duplex-devstack-kafka",
            "appender.file.type = RollingFile",
            "appender.file.name = file",
            f"appender.file.fileName = {log_file}",
            f"appender.file.filePattern = {log_file}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 50MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = info",
            "rootLogger.appenderRef.file.ref = file",
            # Per-request and per-partition state logs drown everything else at INFO.
            "logger.request.name = kafka.request.logger",
            "logger.request.level = warn",
            "logger.state.name = state.change.logger",
            "logger.state.level = warn",
            "",
        ]
    )


async def cluster_metadata(bootstrap_servers: str, within: float = 5.0) -> dict[str, Any] | None:
    """The cluster's metadata (brokers and all topics) or None when the broker does not answer."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(within * 1000),
        client_id="duplex-devstack-probe",
    )
    try:
        await asyncio.wait_for(admin.start(), within)
        metadata: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), within)
        metadata["topics"] = await asyncio.wait_for(admin.describe_topics(), within)
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        await admin.close()
    return metadata


class KafkaServer(LocalServer):
    """One broker+controller JVM whose files all live under ``state_dir``."""

    ready_within = 120.0

    def __init__(
        self,
        state_dir: Path,
        ports: KafkaPorts,
        *,
        libs_dir: Path | None = None,
        jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS,
        secured: SecuredListener | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.secured = secured
        self.libs_dir = libs_dir or kafka_libs_dir()
        self.jvm_options = jvm_options
        self.data_dir = state_dir / "data"
        self.config_file = state_dir / "server.properties"
        self.log4j_file = state_dir / "log4j2.properties"
        self.log_file = state_dir / "logs" / "server.log"
        self.out_file = state_dir / "kafka.out"
        self.pid_file = state_dir / "kafka.pid"
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.ports.broker}"

    @property
    def secured_bootstrap_servers(self) -> str | None:
        return None if self.secured is None else f"{HOST}:{self.secured.port}"

    @property
    def marker(self) -> str:
        return str(self.config_file)

    def _java(self, main_class: str, *args: str, jvm_options: tuple[str, ...] = ()) -> list[str]:
        return [
            ensure_java(),
            *jvm_options,
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{self.libs_dir}/*",
            main_class,
            *args,
        ]

    def _write_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(exist_ok=True)
        self.config_file.write_text(render_properties(server_properties(self.ports, self.data_dir, self.secured)))
        self.log4j_file.write_text(render_log4j2(self.log_file))

    def _format_storage(self) -> None:
        """Give a fresh data dir its KRaft identity; a formatted one is left alone."""
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                new_cluster_id(),
                "--config",
                str(self.config_file),
                "--ignore-formatted",
                *(arg for credential in self._scram() for arg in ("--add-scram", credential)),
                jvm_options=("-Xmx256m", *LEAN_JVM),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            msg = f"formatting {self.data_dir} failed:\n{result.stdout}{result.stderr}"
            raise KafkaStartError(msg)

    def _scram(self) -> tuple[str, ...]:
        return self.secured.scram_credentials() if self.secured else ()

    def start(self) -> None:
        """Write the config, format storage once, and launch the JVM; a running broker is kept."""
        if self.running:
            return
        if not kafka_installed(self.libs_dir):
            msg = f"Kafka's jars are missing from {self.libs_dir}; run: python -m devstack install"
            raise KafkaStartError(msg)
        self._write_config()
        self._format_storage()
        self._child = processes.spawn(
            self._java(
                "kafka.Kafka",
                str(self.config_file),
                jvm_options=(
                    *self.jvm_options,
                    "-XX:+ExitOnOutOfMemoryError",
                    "-Djava.awt.headless=true",
                    f"-Dkafka.logs.dir={self.log_file.parent}",
                    *(self.secured.jvm_options() if self.secured else ()),
                ),
            ),
            log_file=self.out_file,
            cwd=self.state_dir,
        )
        self.pid_file.write_text(f"{self._child.pid}\n")

    async def wait_ready(self, within: float | None = None) -> None:
        """Return once this broker leads, and serves, every partition of every topic.

        Registered is not enough: right after a (re)start the broker still loads its partitions,
        and clients would meet NotLeaderForPartition for a few seconds.
        """
        within = within or self.ready_within
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running:
                msg = f"Kafka exited while starting; end of {self.log_file}:\n{self._logs()}"
                raise KafkaStartError(msg)
            # A plain connect first: aiokafka logs an error for every refused connection.
            metadata = await cluster_metadata(self.bootstrap_servers) if await self._listening() else None
            if metadata and self._serving(metadata):
                try:
                    await wait_until_served(self.bootstrap_servers, within=max(deadline - time.monotonic(), 1.0))
                except (KafkaError, TimeoutError):
                    continue
                return
            await asyncio.sleep(0.25)
        msg = f"Kafka not ready after {within:.0f}s; end of {self.log_file}:\n{self._logs()}"
        raise KafkaStartError(msg)

    @staticmethod
    def _serving(metadata: dict[str, Any]) -> bool:
        return any(broker["node_id"] == NODE_ID for broker in metadata["brokers"]) and all_led(metadata["topics"])

    async def _listening(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.ports.broker), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        await writer.wait_closed()
        return True

    def _logs(self) -> str:
        return processes.log_tail(self.log_file) + "\n" + processes.log_tail(self.out_file, 10)

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        pid = self.pid
        if pid is not None:
            processes.terminate(pid, timeout=timeout, child=self._child)
        self._forget()

    def __repr__(self) -> str:
        return f"KafkaServer({self.bootstrap_servers}, pid={self.pid}, dir={self.state_dir})"

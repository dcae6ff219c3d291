"""Duplex's services as OS processes on the local stack: start, stop, kill, restart, wait for health.

One :class:`Pipeline` per state dir runs the five services, the admin API and the example app, each
its own process (``python -m services.<name>``) configured only through the environment variables its
settings read. ``make demo`` uses it, and so do tests that crash and restart services (kill -9)::

    pipeline = Pipeline(PipelineConfig(state_dir, bootstrap, dsn, pubsub_target=..., ca_file=...))
    await pipeline.start()            # every service not already running with this configuration
    pipeline.kill("writer")           # SIGKILL, as after a power cut
    await pipeline.restart("writer")  # same ports, same settings; returns once it is healthy
    pipeline.stop()                   # SIGTERM, then SIGKILL after the timeout

Files live in ``<state dir>/pipeline/``: ``<name>.log``, ``<name>.pid``, ``<name>.settings`` (a
fingerprint: a running service whose settings changed is restarted, one whose settings match is
reused) and ``ports.json`` (metrics ports and the governor's gRPC port, kept across restarts so
that the writer's channel to the governor stays valid). Each process is also registered in
``stack.json``, so ``python -m devstack status`` lists it and ``down`` stops it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack import processes
from devstack.health import wait_serving
from devstack.paths import REPO_ROOT
from devstack.ports import reuse_or_pick
from devstack.server import LocalServer
from devstack.state import locked, register_process

PIPELINE_DIR = "pipeline"

# Environment variables the pipeline sets; inherited ones with these prefixes are dropped so that
# a developer's sourced stack.env (or an old export) cannot leak a different setting in.
_OWN_PREFIXES = (
    "KAFKA_",
    "POSTGRES_",
    "TELEMETRY_",
    "CDC_INGEST_",
    "MAPPING_",
    "RESOLVER_",
    "WRITER_",
    "GOVERNOR_",
    "PARTNERS_APP_",
    "VAULT_",
    "DUPLEX_",
)
# services.common.service.READY_MESSAGE: logged once a service's resources are open and it consumes.
_SERVICE_READY = r"service running"


@dataclass(frozen=True)
class ServiceSpec:
    """How one service is started and how it shows it is healthy."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    # A log line (regex) printed once the process serves; None: the gRPC health service says so.
    ready_log: str | None = _SERVICE_READY
    # Whether it serves Prometheus metrics (the example app does not).
    metrics: bool = True


# Start order: the governor first (the writer asks it before every call), cdc-ingest last (its
# backfill should find every consumer already running). Stopped in reverse.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("rate-limit-governor", "services.rate_limit_governor", ready_log=None, metrics=False),
    # The admin API (``duplex serve``): its port is the HTTP API's; it serves no separate metrics.
    ServiceSpec("admin", "services.admin", args=("serve",), metrics=False),
    ServiceSpec("mapping", "services.mapping"),
    ServiceSpec("conflict-resolver", "services.conflict_resolver"),
    # The writer is useful only once it owns partitions of crm-writes; its consumer logs that.
    ServiceSpec("writer", "services.writer", ready_log=r"assigned to partitions"),
    ServiceSpec(
        "partners-app", "examples.partners_app", args=("run",), ready_log=r"partners app running", metrics=False
    ),
    ServiceSpec("cdc-ingest", "services.cdc_ingest"),
)
SERVICE_NAMES = tuple(spec.name for spec in SERVICES)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the services need to know about the stack; the rest of their settings keep defaults."""

    state_dir: Path
    bootstrap_servers: str
    dsn: str
    # The Salesforce Pub/Sub endpoint (host:port) and the CA that signs it and the REST endpoint.
    pubsub_target: str
    ca_file: str
    topic_prefix: str = ""
    # Tenants cdc-ingest serves (empty: every configured tenant).
    tenants: tuple[str, ...] = ()
    # Environment variables named by the tenants' secretRefs (client secret, password, private key).
    secrets: Mapping[str, str] = field(default_factory=dict)
    # VAULT_KEYS for the services that read tenants' tokens from the vault (None: they run without).
    vault_keys: str | None = None
    # The example app: its tenant and database (default: its own schema in Duplex's database).
    app_tenant: str = "acme"
    app_dsn: str | None = None
    # Extra settings per service name, e.g. {"writer": {"WRITER_BATCH_WINDOW_MS": "50"}}.
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Another pipeline's governor (host:port), for a pipeline of further replicas that runs none.
    governor_target: str | None = None

    @property
    def directory(self) -> Path:
        return self.state_dir / PIPELINE_DIR


class ServiceNotHealthyError(RuntimeError):
    """A service exited or did not become healthy in time; the message ends with its log's tail."""


class ServiceProcess(LocalServer):
    """One service process: started through :mod:`devstack.launch` so its command line names our state dir."""

    def __init__(self, spec: ServiceSpec, config: PipelineConfig, settings: Mapping[str, str], port: int) -> None:
        self.spec = spec
        self.config = config
        self.settings = dict(settings)
        # The metrics port, or the gRPC port for the governor.
        self.port = port
        directory = config.directory
        self.pid_file = directory / f"{spec.name}.pid"
        self.log_file = directory / f"{spec.name}.log"
        self._fingerprint_file = directory / f"{spec.name}.settings"
        self._child = None
        self._log_offset = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def marker(self) -> str:
        return str(self.config.directory)

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "devstack.launch", self.marker, self.spec.module, *self.spec.args]

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"argv": self.argv, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def up_to_date(self) -> bool:
        """Running with exactly the settings it would be started with now."""
        try:
            saved = self._fingerprint_file.read_text().strip()
        except FileNotFoundError:
            return False
        return self.running and saved == self.fingerprint

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}/metrics" if self.spec.metrics else None

    def start(self) -> None:
        if self.running:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        child = processes.spawn(self.argv, log_file=self.log_file, env={**inherited, **self.settings}, cwd=REPO_ROOT)
        self._child = child
        self.pid_file.write_text(f"{child.pid}\n")
        self._fingerprint_file.write_text(self.fingerprint + "\n")
        register_process(self.name, child.pid, state_dir=self.config.state_dir)

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid
        if pid is not None:
            processes.terminate(pid, timeout=timeout, child=self._child)
        self._forget()

    async def wait_ready(self, within: float | None = None) -> None:
        deadline = time.monotonic() + (within or self.ready_within)
        if self.spec.ready_log is None:
            await asyncio.to_thread(wait_serving, f"127.0.0.1:{self.port}", self.log_file, within or self.ready_within)
        else:
            pattern = re.compile(self.spec.ready_log)
            while not pattern.search(self._new_log()):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ServiceNotHealthyError(
                        f"{self.name} did not log /{self.spec.ready_log}/ within {within or self.ready_within:.0f}s:\n"
                        f"{processes.log_tail(self.log_file)}"
                    )
                await asyncio.sleep(0.1)
        if self.metrics_url is not None:
            async with httpx.AsyncClient(timeout=2) as http:
                while True:
                    self._check_alive()
                    try:
                        if (await http.get(self.metrics_url)).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise ServiceNotHealthyError(f"{self.name}: no metrics at {self.metrics_url}")
                    await asyncio.sleep(0.1)

    def _check_alive(self) -> None:
        if not self.running:
            raise ServiceNotHealthyError(f"{self.name} exited:\n{processes.log_tail(self.log_file)}")

    def _new_log(self) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def metrics_text(self) -> str:
        """The service's Prometheus exposition now."""
        if self.metrics_url is None:
            return ""
        return httpx.get(self.metrics_url, timeout=5).text


class Pipeline:
    """The services of one local stack, by name."""

    def __init__(self, config: PipelineConfig, specs: Iterable[ServiceSpec] = SERVICES) -> None:
        self.config = config
        self.specs = {spec.name: spec for spec in specs}
        config.directory.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        self.services = {
            name: ServiceProcess(spec, config, self._settings(spec, ports), ports[name])
            for name, spec in self.specs.items()
        }

    @property
    def governor_target(self) -> str:
        return f"127.0.0.1:{self.services['rate-limit-governor'].port}"

    @property
    def admin_url(self) -> str:
        """The admin API's base URL (also where Salesforce sends browsers back: /api/v1/oauth/callback)."""
        return f"http://127.0.0.1:{self.services['admin'].port}"

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    # ------------------------------------------------------------------ lifecycle

    async def start(self, names: Iterable[str] | None = None, *, within: float = 90.0) -> list[str]:
        """Start the named services (default: all) unless already running with these settings.

        A service running with other settings is restarted. Returns the names started; raises
        :class:`ServiceNotHealthyError` if one does not become healthy ``within`` seconds.
        """
        chosen = self._names(names)
        stale = [n for n in chosen if self.services[n].running and not self.services[n].up_to_date]
        await asyncio.gather(*(asyncio.to_thread(self.services[n].stop) for n in stale))
        started = [n for n in chosen if not self.services[n].running]
        # The governor first: the writer's first call asks it.
        first = [n for n in started if self.specs[n].ready_log is None]
        for group in (first, [n for n in started if n not in first]):
            for name in group:
                self.services[name].start()
            await asyncio.gather(*(self.services[name].wait_ready(within) for name in group))
        return started

    def stop(self, names: Iterable[str] | None = None, *, timeout: float = 30.0) -> list[str]:
        """SIGTERM (then SIGKILL after ``timeout``), in reverse start order. Returns the names stopped."""
        stopped = []
        for name in reversed(self._names(names)):
            if self.services[name].running:
                self.services[name].stop(timeout)
                stopped.append(name)
        return stopped

    def kill(self, name: str) -> None:
        """SIGKILL one service (and anything it forked); no clean shutdown."""
        self.services[name].kill()

    async def restart(self, name: str, *, within: float = 90.0) -> None:
        """Stop (if running), start with the same ports and settings, and wait until healthy."""
        await self.services[name].restart(within)

    def status(self) -> dict[str, bool]:
        return {name: service.running for name, service in self.services.items()}

    # ------------------------------------------------------------------ configuration

    def _names(self, names: Iterable[str] | None) -> list[str]:
        if names is None:
            return list(self.specs)
        wanted = set(names)
        unknown = wanted - set(self.specs)
        if unknown:
            raise KeyError(f"unknown services {sorted(unknown)}; known: {', '.join(self.specs)}")
        return [n for n in self.specs if n in wanted]

    def _ports(self) -> dict[str, int]:
        """One port per service, kept across runs (``ports.json``) while still free or ours."""
        path = self.config.directory / "ports.json"
        with locked(self.config.state_dir):
            saved: dict[str, int | None] = json.loads(path.read_text()) if path.exists() else {}
            saved = {name: saved.get(name) for name in self.specs}
            ours = set()
            for name, spec in self.specs.items():
                probe = ServiceProcess(spec, self.config, {}, 0)
                if probe.running:
                    ours.add(name)
            ports = reuse_or_pick(saved, ours)
            path.write_text(json.dumps(ports, indent=2) + "\n")
        return ports

    def _governor(self, ports: Mapping[str, int]) -> str:
        return self.config.governor_target or f"127.0.0.1:{ports['rate-limit-governor']}"

    def _settings(self, spec: ServiceSpec, ports: Mapping[str, int]) -> dict[str, str]:
        """The environment one service runs with: shared KAFKA_/POSTGRES_/TELEMETRY_ plus its own prefix."""
        c = self.config
        kafka = {"KAFKA_BOOTSTRAP_SERVERS": c.bootstrap_servers, "KAFKA_TOPIC_PREFIX": c.topic_prefix}
        shared = {
            **kafka,
            "POSTGRES_DSN": c.dsn,
            # Six processes share one local PostgreSQL (max_connections 100).
            "POSTGRES_POOL_MAX_SIZE": "5",
            "TELEMETRY_METRICS_PORT": str(ports[spec.name]),
            # A local stack talks to the emulator on 127.0.0.1, which only a development deployment may
            # (services.common.tenant_config.policy).
            "DUPLEX_DEVELOPMENT": "true",
        }
        own: dict[str, str]
        if spec.name == "rate-limit-governor":
            own = {
                "GOVERNOR_HOST": "127.0.0.1",
                "GOVERNOR_PORT": str(ports[spec.name]),
                # The gRPC port is the health check; no separate metrics endpoint.
                "TELEMETRY_METRICS_PORT": "0",
            }
        elif spec.name == "cdc-ingest":
            own = {
                "CDC_INGEST_PUBSUB_TARGET": c.pubsub_target,
                "CDC_INGEST_CA_FILE": c.ca_file,
                "CDC_INGEST_TENANTS": json.dumps(list(c.tenants)),
                # Stable, so a restarted (or killed and restarted) replica takes its own lease back
                # at once instead of waiting for it to expire.
                "CDC_INGEST_REPLICA_ID": f"devstack-{hashlib.sha256(str(c.state_dir).encode()).hexdigest()[:8]}",
                "CDC_INGEST_GOVERNOR_TARGET": self._governor(ports),
                **c.secrets,
            }
        elif spec.name == "admin":
            own = {
                "DUPLEX_ADMIN_HOST": "127.0.0.1",
                "DUPLEX_ADMIN_PORT": str(ports[spec.name]),
                "DUPLEX_ADMIN_SALESFORCE_CA_FILE": c.ca_file,
                "TELEMETRY_METRICS_PORT": "0",
                **c.secrets,
            }
        elif spec.name == "mapping":
            # A newly applied mapping version is picked up within a second.
            own = {"MAPPING_CONFIG_CHECK_SECONDS": "1"}
        elif spec.name == "writer":
            own = {
                "WRITER_GOVERNOR_TARGET": self._governor(ports),
                "WRITER_SALESFORCE_CA_FILE": c.ca_file,
                **c.secrets,
            }
        elif spec.name == "partners-app":
            return {
                **kafka,
                "PARTNERS_APP_DSN": c.app_dsn or c.dsn,
                "PARTNERS_APP_TENANT": c.app_tenant,
                **c.overrides.get(spec.name, {}),
            }
        else:
            own = {}
        if spec.name in ("admin", "cdc-ingest", "writer") and c.vault_keys:
            # The admin API keeps the tokens of tenants it connects in the vault; the two services
            # that call Salesforce read them there.
            own["VAULT_KEYS"] = c.vault_keys
        return {**shared, **own, **c.overrides.get(spec.name, {})}

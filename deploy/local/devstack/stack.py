"""``up``, ``down`` and ``status`` of the local stack in one state directory (``var/`` by default).

Layout: ``kafka/`` (the broker's files), ``postgres/`` (the cluster's, see below), ``stack.json``
(ports, pids, endpoints) and ``stack.env`` (what services source).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack import processes
from devstack.kafka import KafkaPorts, KafkaServer
from devstack.paths import MIGRATIONS_DIR
from devstack.pipeline import PIPELINE_DIR
from devstack.ports import reuse_or_pick
from devstack.postgres import OsAccount, PostgresServer, can_traverse, server_account
from devstack.state import (
    StackState,
    load_state,
    locked,
    new_vault_keys,
    record_for,
    save_env,
    save_state,
)
from services.common.db import migrate
from services.common.topic_admin import ensure_topics
from services.common.topics import TopicTable, load_topic_table

# Where the cluster goes when the server account cannot reach the state dir (a repo under a
# 0700 /root on a CI machine): PostgreSQL must run as a non-root user that can enter its data dir.
FALLBACK_POSTGRES_ROOT = Path("/var/lib/duplex")


class StackError(RuntimeError):
    """The stack is not in the state asked for; the message says what is off."""


@dataclass
class UpResult:
    state: StackState
    topics_created: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    # Seconds per phase, printed by `up`: start-up time is what developers wait on.
    timings: dict[str, float] = field(default_factory=dict)


def postgres_home_for(state_dir: Path, account: OsAccount) -> Path:
    """``<state>/postgres``, or a per-state-dir folder under /var/lib/duplex if the account cannot reach it."""
    if can_traverse(state_dir, account):
        return state_dir / "postgres"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    FALLBACK_POSTGRES_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    return FALLBACK_POSTGRES_ROOT / f"postgres-{digest}"


def kafka_server(state_dir: Path, state: StackState) -> KafkaServer:
    assert state.kafka_port is not None
    assert state.kafka_controller_port is not None
    return KafkaServer(state_dir / "kafka", KafkaPorts(state.kafka_port, state.kafka_controller_port))


def postgres_server(state: StackState, account: OsAccount | None = None) -> PostgresServer:
    assert state.postgres_home is not None
    assert state.postgres_port is not None
    return PostgresServer(Path(state.postgres_home), state.postgres_port, account=account)


def _running(state: StackState, name: str) -> bool:
    record = state.processes.get(name)
    return record is not None and record.running


@dataclass
class _Plan:
    state: StackState
    kafka: KafkaServer
    postgres: PostgresServer


def _plan(state_dir: Path, topic_prefix: str) -> _Plan:
    """Load the state and settle the ports: saved ones where still usable, fresh ones otherwise."""
    state = load_state(state_dir)
    account = server_account()
    if state.postgres_home is None:
        state.postgres_home = str(postgres_home_for(state_dir, account))
    in_use_by_us = {"kafka", "kafka_controller"} if _running(state, "kafka") else set()
    if _running(state, "postgres"):
        in_use_by_us.add("postgres")
    ports = reuse_or_pick(
        {
            "kafka": state.kafka_port,
            "kafka_controller": state.kafka_controller_port,
            "postgres": state.postgres_port,
        },
        in_use_by_us=in_use_by_us,
    )
    state.kafka_port = ports["kafka"]
    state.kafka_controller_port = ports["kafka_controller"]
    state.postgres_port = ports["postgres"]
    state.topic_prefix = topic_prefix
    if state.vault_keys is None:
        state.vault_keys = new_vault_keys()
    return _Plan(state, kafka_server(state_dir, state), postgres_server(state, account))


async def _launch(state_dir: Path, plan: _Plan) -> list[str]:
    """Start whichever server is not running, both at once (format and initdb each take seconds)."""
    servers: dict[str, KafkaServer | PostgresServer] = {"kafka": plan.kafka, "postgres": plan.postgres}
    stop_signals = {"kafka": signal.SIGTERM, "postgres": signal.SIGINT}
    to_start = [name for name, server in servers.items() if not server.running]
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(servers[name].start) for name in to_start), return_exceptions=True
    )
    for name, server in servers.items():
        pid = server.pid
        if pid is not None:
            plan.state.processes[name] = record_for(pid, stop_signals[name])
    # Recorded before anything can fail further, so `down` cleans up after a half-made start.
    save_state(state_dir, plan.state)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return to_start


async def up(
    state_dir: Path,
    *,
    topic_prefix: str = "",
    table: TopicTable | None = None,
    migrations_dir: Path = MIGRATIONS_DIR,
) -> UpResult:
    """Start Kafka and PostgreSQL (unless running), create the topics, apply the migrations."""
    state_dir = await asyncio.to_thread(state_dir.resolve)
    timings: dict[str, float] = {}
    with locked(state_dir):
        began = time.monotonic()
        plan = await asyncio.to_thread(_plan, state_dir, topic_prefix)
        state, kafka, postgres = plan.state, plan.kafka, plan.postgres
        started = await _launch(state_dir, plan)
        timings["launch"] = time.monotonic() - began

        async def ready(name: str, server: KafkaServer | PostgresServer) -> None:
            await server.wait_ready()
            timings[f"{name} ready"] = time.monotonic() - began

        await asyncio.gather(ready("kafka", kafka), ready("postgres", postgres))
        state.bootstrap_servers = kafka.bootstrap_servers
        state.dsn = postgres.dsn
        save_state(state_dir, state)
        save_env(state_dir, state)
        topics = await ensure_topics(kafka.bootstrap_servers, table or load_topic_table(), topic_prefix)
        timings["topics"] = time.monotonic() - began
        applied = await migrate(postgres.dsn, migrations_dir)
        timings["migrations"] = time.monotonic() - began
        return UpResult(state, topics, applied, started, timings)


def _markers(state_dir: Path, state: StackState) -> list[str]:
    """Argv fragments only our servers have: their config file and data dir, the emulator's data
    dir, and the pipeline's folder (every service is started through ``devstack.launch`` with it)."""
    homes = {state_dir / "postgres"}
    if state.postgres_home is not None:
        homes.add(Path(state.postgres_home))
    return [
        str(state_dir / PIPELINE_DIR),
        str(state_dir / "emulator" / "tls"),
        str(state_dir / "kafka" / "server.properties"),
        *(str(home / "data") for home in homes),
    ]


def leftovers(state_dir: Path) -> list[str]:
    """Processes of this stack still alive, as ``name (pid)``."""
    state_dir = state_dir.resolve()
    state = load_state(state_dir)
    alive = [f"{name} ({record.pid})" for name, record in state.processes.items() if record.running]
    recorded = {record.pid for record in state.processes.values()}
    for marker in _markers(state_dir, state):
        alive += [f"unrecorded ({pid})" for pid in processes.pids_mentioning(marker) if pid not in recorded]
    return alive


def down(state_dir: Path, *, timeout: float = 30.0) -> list[str]:
    """Stop every registered process (last registered first) and any stray server of ours.

    Raises :class:`StackError` if anything is still alive afterwards.
    """
    state_dir = state_dir.resolve()
    with locked(state_dir):
        state = load_state(state_dir)
        stopped = []
        for name, record in reversed(state.processes.items()):
            if record.running:
                processes.terminate(record.pid, sig=record.stop_signal, timeout=timeout)
                stopped.append(name)
        # A server whose record was lost (a deleted stack.json, a crashed `up`) still names our
        # files on its command line.
        for marker in _markers(state_dir, state):
            for pid in processes.pids_mentioning(marker):
                processes.terminate(pid, timeout=timeout)
                stopped.append(f"unrecorded ({pid})")
        remaining = leftovers(state_dir)
        if remaining:
            msg = f"still running after down: {', '.join(remaining)}"
            raise StackError(msg)
        state.processes.clear()
        save_state(state_dir, state)
        return stopped


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int
    running: bool


def status(state_dir: Path) -> tuple[StackState, list[ProcessStatus]]:
    state = load_state(state_dir)
    rows = [ProcessStatus(name, record.pid, record.running) for name, record in state.processes.items()]
    return state, rows

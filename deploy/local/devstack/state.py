"""``<state dir>/stack.json``: what the local stack runs, on which ports, and how to reach it.

Anything started for the local stack (the broker and database here; later the emulator and the
services) registers its pid so that ``down`` can stop it. The file holds the database password and
the vault's key, so it is written 0600, like ``stack.env``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from devstack import processes
from devstack.paths import DEFAULT_STATE_DIR

STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
_LOCK_FILE = "stack.lock"


class ProcessRecord(BaseModel):
    """One registered process; ``start_ticks`` tells it apart from a later process with its pid."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    start_ticks: int | None
    stop_signal: int = int(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return processes.is_running(self.pid, self.start_ticks)


class StackState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kafka_port: int | None = None
    kafka_controller_port: int | None = None
    postgres_port: int | None = None
    postgres_home: str | None = None
    bootstrap_servers: str | None = None
    dsn: str | None = None
    topic_prefix: str = ""
    # VAULT_KEYS of the local stack: made once and kept, since the data keys in the database are
    # wrapped by it.
    vault_keys: str | None = None
    # Registration order; ``down`` stops them in reverse (services before their broker/database).
    processes: dict[str, ProcessRecord] = {}


def load_state(state_dir: Path) -> StackState:
    path = state_dir / STATE_FILE
    if not path.exists():
        return StackState()
    return StackState.model_validate_json(path.read_text())


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def save_state(state_dir: Path, state: StackState) -> None:
    _write_private(state_dir / STATE_FILE, state.model_dump_json(indent=2) + "\n")


def new_vault_keys() -> str:
    """A ``VAULT_KEYS`` of one fresh key-encryption key, as ``openssl rand -base64 32`` would make."""
    return "local:" + base64.b64encode(secrets.token_bytes(32)).decode()


def render_env(state: StackState) -> str:
    """``stack.env``: what a service needs to reach the stack (``set -a; . var/stack.env``)."""
    text = (
        f"KAFKA_BOOTSTRAP_SERVERS={state.bootstrap_servers}\n"
        f"KAFKA_TOPIC_PREFIX={state.topic_prefix}\n"
        f"POSTGRES_DSN={state.dsn}\n"
    )
    return text + (f"VAULT_KEYS={state.vault_keys}\n" if state.vault_keys else "")


def save_env(state_dir: Path, state: StackState) -> None:
    _write_private(state_dir / ENV_FILE, render_env(state))


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise ``up``, ``down`` and registrations against the same state dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_for(pid: int, stop_signal: int = signal.SIGTERM) -> ProcessRecord:
    ticks = processes.start_ticks(pid)
    if ticks is None:
        msg = f"process {pid} is not running"
        raise ProcessLookupError(msg)
    return ProcessRecord(pid=pid, start_ticks=ticks, stop_signal=int(stop_signal))


def register_process(
    name: str,
    pid: int,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    stop_signal: int = signal.SIGTERM,
) -> None:
    """Record a process the local stack started, so ``python -m devstack down`` stops it.

    ``stop_signal`` asks it to shut down cleanly; ``down`` sends SIGKILL if it has not exited
    after 30 s. Registering a name again replaces the old record.
    """
    record = record_for(pid, stop_signal)
    with locked(state_dir):
        state = load_state(state_dir)
        state.processes.pop(name, None)
        state.processes[name] = record
        save_state(state_dir, state)

"""The CLI's tests against the real admin API: a migrated database, the API serving on a real port
in-process (the admin API tests' harness), and ``duplex`` run in a worker thread, as a user runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from services.admin.auth import Role
from services.admin.cli import app
from services.common.db import migrate
from tests.integration.admin_api.harness import Api, serving

ROOT = Path(__file__).resolve().parents[3]
SAMPLE_TEXT = (ROOT / "deploy" / "examples" / "tenant-acme.yaml").read_text()
# Every variable the CLI reads, unset unless a test sets it: the machine's own must not leak in.
# COLUMNS keeps rich from wrapping tables at the runner's default 80 characters.
CLEAN_ENV: dict[str, str | None] = {
    "DUPLEX_SERVER": None,
    "DUPLEX_TOKEN": None,
    "DUPLEX_TOKEN_FILE": None,
    "DUPLEX_TIMEOUT_SECONDS": None,
    "DUPLEX_ACTOR": None,
    "POSTGRES_DSN": None,
    "COLUMNS": "200",
}


def run_cli(args: list[str], env: dict[str, str | None], stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, args, env={**CLEAN_ENV, **env}, input=stdin)


@dataclass
class Cli:
    """``duplex`` against the API under test; the token each call sends is the caller's choice."""

    api: Api
    server: str
    admin: str

    async def __call__(
        self, *args: str, token: str | None = None, stdin: str | None = None, **env: str | None
    ) -> Result:
        environment = {"DUPLEX_SERVER": self.server, "DUPLEX_TOKEN": self.admin if token is None else token, **env}
        # In a thread: the CLI blocks on HTTP while this event loop serves the API it calls.
        return await asyncio.to_thread(run_cli, list(args), environment, stdin)

    async def token(self, role: Role = Role.ADMIN, tenants: list[str] | None = None, name: str | None = None) -> str:
        return await self.api.token(role, tenants, name=name)


def in_loop(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on the test's event loop from the CLI's thread (a browser, say) and wait for it."""
    return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=60)


def sample_with(old: str, new: str) -> str:
    assert old in SAMPLE_TEXT
    return SAMPLE_TEXT.replace(old, new, 1)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "tenant-acme.yaml"
    path.write_text(SAMPLE_TEXT)
    return path


@pytest.fixture
async def migrated(fresh_database: str) -> str:
    await migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def api(migrated: str) -> AsyncIterator[Api]:
    async with serving(migrated) as started:
        yield started


@pytest.fixture
async def cli(api: Api) -> Cli:
    return Cli(api, f"http://127.0.0.1:{api.running.port}", await api.token(name="cli admin"))

"""``python -m services.admin serve`` as a process: a free port, real HTTP, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from services.admin.auth import Role
from services.admin.token_store import TokenStore
from tests.integration.admin_api.harness import ROOT, YAML, bearer, connect, tenant_yaml

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0


async def _log_line(stream: asyncio.StreamReader, message: str) -> dict[str, Any]:
    """The first JSON log line on ``stream`` with ``message`` (every line before it is skipped)."""
    while True:
        raw = await stream.readline()
        if not raw:
            pytest.fail(f"the process ended before logging {message!r}")
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if line.get("message") == message:
            return dict(line)


async def test_serve_on_a_free_port_then_stop(migrated: str) -> None:
    db = await connect(migrated)
    try:
        _, token = await TokenStore(db).create(name="ops", role=Role.ADMIN, tenants=None, lifetime=None, actor="test")
    finally:
        await db.close()
    env = {**os.environ, "POSTGRES_DSN": migrated, "DUPLEX_ADMIN_PORT": "0", "TELEMETRY_LOG_JSON": "true"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.admin",
        "serve",
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        serving = await asyncio.wait_for(_log_line(process.stderr, "admin API serving"), START_TIMEOUT)
        port = serving["port"]
        assert isinstance(port, int)
        assert port > 0
        await asyncio.wait_for(_log_line(process.stderr, "service running"), START_TIMEOUT)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/readyz")).json() == {"status": "ok"}
            assert (await http.get("/openapi.json")).json()["info"]["title"] == "Duplex admin API"
            assert (await http.get("/api/v1/tenants")).status_code == 401
            applied = await http.put("/api/v1/tenants/acme", content=tenant_yaml(), headers={**YAML, **bearer(token)})
            assert applied.status_code == 201, applied.text
            listed = await http.get("/api/v1/tenants", headers=bearer(token))
            assert [t["name"] for t in listed.json()["items"]] == ["acme"]
            assert listed.headers["x-request-id"]
            assert "server" not in listed.headers

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_serve_without_a_database_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"POSTGRES_DSN", "postgres_dsn"}}
    done = subprocess.run(
        [sys.executable, "-m", "services.admin", "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "error: no database configured: set POSTGRES_DSN or pass --dsn\n"

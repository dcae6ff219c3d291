"""`duplex config` / `duplex tenants` against a real PostgreSQL, one fresh database per test.

The CLI runs in a worker thread (it calls asyncio.run itself); the tests inspect the tables
directly with asyncpg.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from typer.testing import CliRunner, Result

from services.admin.cli import app
from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.tenant_config import (
    TenantNotFoundError,
    config_sha256,
    fetch_config,
    load_current,
    parse_config_file,
    to_document,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "deploy" / "examples" / "tenant-acme.yaml"
TABLES = ("tenants", "config_versions", "audit_log")


@pytest.fixture
async def admin_dsn(fresh_database: str) -> str:
    """A fresh database with every migration applied by the real runner."""
    await migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def db(admin_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(admin_dsn)
    yield conn
    await conn.close()


async def duplex(*args: str, dsn: str, actor: str = "tester") -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, app, [*args, "--dsn", dsn], env={"DUPLEX_ACTOR": actor, "POSTGRES_DSN": None}
    )


async def snapshot(conn: Any) -> dict[str, list[str]]:
    """Every row of every admin table, as text, in a stable order."""
    return {
        table: [r[0] for r in await conn.fetch(f"SELECT t::text FROM {table} t ORDER BY t::text")] for table in TABLES
    }


def sample_with(old: str, new: str) -> str:
    text = SAMPLE.read_text()
    assert old in text
    return text.replace(old, new, 1)


async def test_apply_show_unchanged_then_new_version(admin_dsn: str, db: Any, tmp_path: Path) -> None:
    (sample,) = parse_config_file(SAMPLE.name, SAMPLE.read_text())

    first = await duplex("config", "apply", "-f", str(SAMPLE), dsn=admin_dsn, actor="alice")
    assert first.exit_code == 0, first.output
    assert first.stdout == "tenant/acme configured (version 1)\n"
    row = await db.fetchrow("SELECT version, document, sha256, applied_by FROM config_versions")
    assert (row["version"], row["sha256"], row["applied_by"]) == (1, config_sha256(sample), "alice")
    assert json.loads(row["document"]) == to_document(sample)
    assert [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")] == [
        "tenant.created",
        "config.applied",
    ]

    shown = await duplex("config", "show", "acme", dsn=admin_dsn)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("# tenant/acme version 1, applied ")
    assert f"# sha256 {config_sha256(sample)}\n" in shown.stdout
    (reparsed,) = parse_config_file("shown.yaml", shown.stdout)
    assert reparsed == sample

    before = await snapshot(db)
    again = await duplex("config", "apply", "-f", str(SAMPLE), dsn=admin_dsn)
    assert again.exit_code == 0, again.output
    assert again.stdout == "tenant/acme unchanged (version 1)\n"
    assert await snapshot(db) == before

    # Re-applying what `show` printed is also a no-op: the output is the canonical document.
    shown_file = tmp_path / "shown.yaml"
    shown_file.write_text(shown.stdout)
    assert (await duplex("config", "apply", "-f", str(shown_file), dsn=admin_dsn)).stdout == (
        "tenant/acme unchanged (version 1)\n"
    )

    changed = tmp_path / "acme.yaml"
    changed.write_text(sample_with("dailyApiCap: 5000", "dailyApiCap: 7000"))
    second = await duplex("config", "apply", "-f", str(changed), dsn=admin_dsn, actor="bob")
    assert second.exit_code == 0, second.output
    assert second.stdout == "tenant/acme configured (version 2)\n"
    assert [tuple(r) for r in await db.fetch("SELECT version, applied_by FROM config_versions ORDER BY 1")] == [
        (1, "alice"),
        (2, "bob"),
    ]
    audit = await db.fetchrow("SELECT actor, tenant_id, action, detail FROM audit_log ORDER BY id DESC LIMIT 1")
    assert (audit["actor"], audit["tenant_id"], audit["action"]) == ("bob", "acme", "config.applied")
    assert json.loads(audit["detail"])["previousVersion"] == 1

    as_json = await duplex("config", "show", "acme", "-o", "json", dsn=admin_dsn)
    assert json.loads(as_json.stdout)["spec"]["salesforce"]["dailyApiCap"] == 7000
    old = await duplex("config", "show", "acme", "--version", "1", "-o", "yaml", dsn=admin_dsn)
    assert yaml.safe_load(old.stdout)["spec"]["salesforce"]["dailyApiCap"] == 5000

    listed = await duplex("tenants", "list", "-o", "json", dsn=admin_dsn)
    assert [(t["name"], t["version"], t["appliedBy"]) for t in json.loads(listed.stdout)] == [("acme", 2, "bob")]
    table = await duplex("tenants", "list", dsn=admin_dsn)
    assert table.stdout.splitlines()[0].split() == ["NAME", "VERSION", "APPLIED", "APPLIED", "BY"]
    assert table.stdout.splitlines()[1].split()[:2] == ["acme", "2"]


async def test_broken_file_writes_nothing(admin_dsn: str, db: Any, tmp_path: Path) -> None:
    assert (await duplex("config", "apply", "-f", str(SAMPLE), dsn=admin_dsn)).exit_code == 0
    before = await snapshot(db)

    beta = sample_with("\n  name: acme\n", "\n  name: beta\n")
    broken = sample_with("dailyApiCap: 5000", "dailyApiCap: 6000").replace(
        "conflictPolicy: app_wins", "conflictPolicy: app-wins", 1
    )
    path = tmp_path / "tenants.yaml"
    # Document 1 is valid (a new tenant, beta) and document 2 (a change to acme) is not.
    path.write_text(f"{beta}\n---\n{broken}")
    result = await duplex("config", "apply", "-f", str(path), dsn=admin_dsn)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: document 2: spec.objects[0].fields[3].conflictPolicy: must be one of app_wins, "
        "crm_wins, newest_wins, app_unless_blank, crm_unless_blank (got 'app-wins')\n"
    )
    assert await snapshot(db) == before


async def test_a_file_of_several_tenants_is_applied_together(admin_dsn: str, db: Any, tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    zeta = sample_with("\n  name: acme\n", "\n  name: zeta\n")
    path.write_text(f"{zeta}\n---\n{SAMPLE.read_text()}")
    result = await duplex("config", "apply", "-f", str(path), dsn=admin_dsn)
    assert result.exit_code == 0, result.output
    assert result.stdout == "tenant/zeta configured (version 1)\ntenant/acme configured (version 1)\n"
    assert [r["id"] for r in await db.fetch("SELECT id FROM tenants ORDER BY id")] == ["acme", "zeta"]


async def test_show_unknown_tenant_or_version_exits_1(admin_dsn: str) -> None:
    missing = await duplex("config", "show", "nobody", dsn=admin_dsn)
    assert (missing.exit_code, missing.stderr) == (1, "error: tenant/nobody: no stored configuration\n")
    await duplex("config", "apply", "-f", str(SAMPLE), dsn=admin_dsn)
    no_version = await duplex("config", "show", "acme", "--version", "9", dsn=admin_dsn)
    assert (no_version.exit_code, no_version.stderr) == (1, "error: tenant/acme: no version 9\n")


async def test_concurrent_applies_to_one_tenant_take_distinct_versions(admin_dsn: str, db: Any) -> None:
    (sample,) = parse_config_file(SAMPLE.name, SAMPLE.read_text())
    count = 8
    variants = [
        sample.model_copy(
            update={
                "spec": sample.spec.model_copy(
                    update={"salesforce": sample.spec.salesforce.model_copy(update={"daily_api_cap": 1000 + i})}
                )
            }
        )
        for i in range(count)
    ]
    connections = [await asyncpg.connect(admin_dsn) for _ in range(count)]
    try:
        results = await asyncio.gather(
            *(
                ConfigStore(conn).apply([variant], f"worker-{i}")
                for i, (conn, variant) in enumerate(zip(connections, variants, strict=True))
            )
        )
        # The same document from every connection at once: exactly one of them stores it.
        repeats = await asyncio.gather(*(ConfigStore(conn).apply([sample], "again") for conn in connections))
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))

    assert sorted(r.version for (r,) in results) == list(range(1, count + 1))
    assert all(r.changed for (r,) in results)
    assert [r.changed for (r,) in repeats].count(True) == 1
    assert {r.version for (r,) in repeats} == {count + 1}
    stored = await db.fetch("SELECT version, sha256 FROM config_versions ORDER BY version")
    assert [r["version"] for r in stored] == list(range(1, count + 2))
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'config.applied'") == count + 1


async def test_services_load_the_current_version(admin_dsn: str, db: Any, tmp_path: Path) -> None:
    with pytest.raises(TenantNotFoundError):
        await load_current(db, "acme")
    await duplex("config", "apply", "-f", str(SAMPLE), dsn=admin_dsn)
    changed = tmp_path / "acme.yaml"
    changed.write_text(sample_with("pollIntervalSeconds: 30", "pollIntervalSeconds: 60"))
    await duplex("config", "apply", "-f", str(changed), dsn=admin_dsn)

    current = await load_current(db, "acme")
    assert current.spec.sync.poll_interval_seconds == 60
    first = await fetch_config(db, "acme", 1)
    assert first is not None
    assert (first.version, first.config.spec.sync.poll_interval_seconds) == (1, 30)
    assert await fetch_config(db, "acme", 3) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_database_exits_2_without_traceback_or_password() -> None:
    dsn = f"postgresql://duplex:hunter2@127.0.0.1:{_closed_port()}/duplex"
    result = subprocess.run(
        [sys.executable, "-m", "services.admin", "config", "apply", "-f", str(SAMPLE), "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot reach the database at 127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr

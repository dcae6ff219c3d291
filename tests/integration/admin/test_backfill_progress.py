"""``GET /api/v1/tenants/{tenant}/backfills[/{object}]``, ``duplex backfills`` and ``duplex backfill
--wait``: how far each object's latest backfill has come, from the progress cdc-ingest saves (the
backfill's job shows the same progress while it runs)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.admin.auth import Role
from tests.integration.admin.conftest import Cli
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration


async def progress(cli: Cli, salesforce_object: str, *, emitted: int, estimated: int | None, done: bool) -> None:
    """What cdc-ingest saves: the count when it begins, the records published after each page."""
    started = datetime.now(UTC) - timedelta(seconds=100)
    await cli.api.db.execute(
        "INSERT INTO backfills (tenant_id, object, status, method, emitted, estimated, started_at, updated_at)"
        " VALUES ('acme', $1, $2, 'bulk', $3, $4, $5::timestamptz, $5::timestamptz + interval '50 seconds')"
        " ON CONFLICT (tenant_id, object) DO UPDATE SET status = EXCLUDED.status, emitted = EXCLUDED.emitted,"
        " estimated = EXCLUDED.estimated, started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at",
        salesforce_object,
        "done" if done else "running",
        emitted,
        estimated,
        started,
    )


async def test_progress_of_each_objects_latest_backfill(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    viewer = bearer(await cli.token(Role.VIEWER))
    assert (await cli.api.http.get("/api/v1/tenants/acme/backfills", headers=viewer)).json() == {"backfills": []}

    await progress(cli, "Account", emitted=5_000, estimated=20_000, done=False)
    await progress(cli, "Contact", emitted=1_200, estimated=1_000, done=True)
    assert (await cli("backfill", "acme", "Lead")).exit_code == 1  # not synced: nothing is requested

    listed = (await cli.api.http.get("/api/v1/tenants/acme/backfills", headers=viewer)).json()["backfills"]
    account, contact = listed
    # 5,000 in 50 s: 100 a second, 150 s for the 15,000 left.
    assert (account["object"], account["status"], account["published"], account["estimated"]) == (
        "Account",
        "running",
        5_000,
        20_000,
    )
    assert (account["percent"], account["recordsPerSecond"], account["secondsLeft"]) == (25.0, 100.0, 150.0)
    assert (contact["status"], contact["percent"], contact["secondsLeft"]) == ("done", 100.0, None)

    one = await cli.api.http.get("/api/v1/tenants/acme/backfills/account", headers=viewer)
    assert one.json() == account

    # Asked for again: requested (not yet counted) until cdc-ingest picks it up.
    assert (await cli("backfill", "acme", "Contact")).exit_code == 0
    again = (await cli.api.http.get("/api/v1/tenants/acme/backfills/Contact", headers=viewer)).json()
    assert (again["status"], again["published"], again["estimated"], again["percent"]) == ("requested", 0, None, None)

    table = await cli("backfills", "acme")
    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0][:4] == ["OBJECT", "STATUS", "METHOD", "PUBLISHED"]
    assert rows[1][:7] == ["Account", "running", "bulk", "5,000", "20,000", "25.0", "100"]
    assert rows[2][:3] == ["Contact", "requested", "bulk"]
    assert json.loads((await cli("backfills", "acme", "--json")).stdout)[0] == account


async def test_wait_follows_a_backfill_until_it_is_done(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0

    async def cdc_ingest() -> None:
        # Claims the job once it is there (the CLI asks from its thread: polled), starts the
        # object's backfill, publishes page by page and finishes.
        while await cli.api.db.fetchval("SELECT count(*) FROM jobs WHERE object = 'Account'") == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await cli.api.db.execute("UPDATE jobs SET status = 'running', started_at = now() WHERE object = 'Account'")
        await cli.api.db.execute(
            "INSERT INTO backfills (tenant_id, object, status, method, estimated)"
            " VALUES ('acme', 'Account', 'running', 'bulk', 3000)"
        )
        for published in (1000, 2000, 3000):
            await asyncio.sleep(0.3)
            await cli.api.db.execute(
                "UPDATE backfills SET emitted = $1, updated_at = now() WHERE object = 'Account'", published
            )
        await cli.api.db.execute("UPDATE backfills SET status = 'done', updated_at = now() WHERE object = 'Account'")
        await cli.api.db.execute(
            "UPDATE jobs SET status = 'succeeded', done = 3000, estimated = 3000, finished_at = now()"
            " WHERE object = 'Account'"
        )

    operator = await cli.token(Role.OPERATOR)  # before the worker shares the test's connection
    worker = asyncio.create_task(cdc_ingest())
    waited = await cli("backfill", "acme", "Account", "--wait", token=operator)
    assert waited.exit_code == 0, waited.output
    await worker
    lines = waited.stdout.splitlines()
    job = await cli.api.db.fetchval("SELECT id FROM jobs WHERE object = 'Account'")
    assert lines[0] == f"backfill of Account for tenant/acme: job {job} (requested)"
    assert lines[1].startswith("backfill of Account done: 3,000 records (")


async def test_scoped_and_unknown(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    await progress(cli, "Account", emitted=1, estimated=2, done=False)
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/backfills"), 401)
    other = bearer(await cli.token(Role.ADMIN, ["other"]))
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/backfills", headers=other), 404)
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/backfills/Account", headers=other), 404)
    missing = await cli.api.http.get("/api/v1/tenants/acme/backfills/Lead", headers=bearer(cli.admin))
    assert "no backfill of Lead" in problem(missing, 404)["detail"]

"""``GET /api/v1/tenants/{tenant}/sync-log``, ``.../records/{record}/timeline``, ``duplex log`` and
``duplex timeline``: the rows the services write, found by status, event, code, pair, any of a
record's ids and time, a page at a time; a record's timeline oldest first."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.admin.auth import Role
from services.admin.sync_log_search import LogQuery, links_of, search, timeline
from services.common import sync_log
from services.common.salesforce_ids import to18
from tests.integration.admin.conftest import Cli
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration

SF_ID_15 = "001Dx00000AbCdE"
SF_ID = to18(SF_ID_15)  # as Duplex stores it; the user may paste either
LINK = "link-partner-1"


async def log(cli: Cli, event: str, *, at: datetime | None = None, tenant: str = "acme", **row: Any) -> None:
    await sync_log.record(
        cli.api.db, tenant_id=tenant, service=row.pop("service", "conflict-resolver"), event=event, **row
    )
    if at is not None:
        await cli.api.db.execute("UPDATE sync_log SET at = $1 WHERE id = (SELECT max(id) FROM sync_log)", at)


async def seed(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    await cli.api.db.execute(
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id) VALUES"
        " ('acme', 'partners', $1, 'p-1', $2, 'dx-1'), ('acme', 'partners', 'link-partner-2', 'p-2', NULL, 'dx-2')",
        LINK,
        SF_ID,
    )
    old = datetime.now(UTC) - timedelta(days=3)
    await log(cli, "change.resolved", link_id=LINK, at=old, detail={"side": "app", "kind": "create", "fields": {}})
    resolved = {"side": "crm", "kind": "update", "fields": {"Phone": {"outcome": "applied", "reason": "newer"}}}
    await log(cli, "change.resolved", link_id=LINK, detail=resolved)
    await log(cli, "conflict.decided", link_id=LINK, code="newest_wins", message="Phone: crm wins (newer)")
    await log(cli, "echo.dropped", link_id=LINK, detail={"echo": "tagged"})
    await log(cli, "write.rejected", link_id=LINK, record_id=SF_ID, code="REQUIRED_FIELD_MISSING", message="Name")
    await log(cli, "change.rejected", service="mapping", record_id="p-9", code="STRING_TOO_LONG", message="name")
    await log(cli, "write.succeeded", service="writer", message="3 records written to Account")
    await log(cli, "pair.quarantined", service="mapping", code="QUARANTINED", detail={"pair": "partners"})
    await log(cli, "change.resolved", link_id="link-partner-2", detail={"side": "app", "kind": "update"})
    await log(cli, "change.rejected", tenant="other", record_id="p-1", code="STRING_TOO_LONG")


async def page(cli: Cli, token: str | None = None, **params: Any) -> dict[str, Any]:
    answer = await cli.api.http.get(
        "/api/v1/tenants/acme/sync-log", params=params, headers=bearer(token or await cli.token(Role.VIEWER))
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def events(body: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in body["entries"]]


async def test_search_by_status_record_pair_and_time(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)

    everything = await page(cli)
    assert len(everything["entries"]) == 9  # the other tenant's row is not acme's
    assert everything["nextCursor"] is None
    times = [(e["at"], e["id"]) for e in everything["entries"]]
    assert times == sorted(times, reverse=True)

    rejected = await page(cli, status="rejected")
    assert events(rejected) == ["change.rejected", "write.rejected"]
    assert rejected["entries"][1]["code"] == "REQUIRED_FIELD_MISSING"
    assert {e["status"] for e in (await page(cli, status=["echo", "conflict"]))["entries"]} == {"echo", "conflict"}
    assert events(await page(cli, status="info")) == ["pair.quarantined"]
    assert events(await page(cli, code="STRING_TOO_LONG", event="change.rejected")) == ["change.rejected"]

    # Any of the record's ids finds the same rows: the app's, Salesforce's in 15 or 18 characters, the link's.
    by_record = {record: events(await page(cli, record=record)) for record in ("p-1", SF_ID, SF_ID_15, LINK)}
    expected = ["write.rejected", "echo.dropped", "conflict.decided", "change.resolved", "change.resolved"]
    assert by_record == dict.fromkeys(by_record, expected)
    assert events(await page(cli, record="p-9")) == ["change.rejected"]

    in_pair = await page(cli, pair="partners")
    assert "pair.quarantined" in events(in_pair)
    assert "write.succeeded" not in events(in_pair)
    assert len(in_pair["entries"]) == 7

    recent = await page(cli, record=LINK, since=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    assert len(recent["entries"]) == 4
    older = await page(cli, record=LINK, until=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    assert events(older) == ["change.resolved"]


async def test_pages_follow_each_other_without_gaps_or_repeats(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)
    token = await cli.token(Role.VIEWER)
    whole = [e["id"] for e in (await page(cli, token))["entries"]]
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = await page(cli, token, **params)
        seen += [e["id"] for e in body["entries"]]
        # A row appended meanwhile is newer than every page: it never shifts the next one.
        await log(cli, "echo.dropped", link_id=LINK)
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == whole


async def test_a_records_timeline_oldest_first(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)
    answer = await cli.api.http.get(
        f"/api/v1/tenants/acme/records/{SF_ID_15}/timeline", headers=bearer(await cli.token(Role.VIEWER))
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["links"] == [{"linkId": LINK, "pair": "partners", "appRecordId": "p-1", "salesforceId": SF_ID}]
    assert [e["event"] for e in body["entries"]] == [
        "change.resolved",
        "change.resolved",
        "conflict.decided",
        "echo.dropped",
        "write.rejected",
    ]
    assert body["truncated"] is False
    url = "/api/v1/tenants/acme/records/p-1/timeline"
    last_two = (await cli.api.http.get(url, params={"limit": 2}, headers=bearer(cli.admin))).json()
    assert [e["event"] for e in last_two["entries"]] == ["echo.dropped", "write.rejected"]
    assert last_two["truncated"] is True

    shown = await cli("timeline", "acme", "p-1")
    assert shown.exit_code == 0, shown.output
    assert SF_ID in shown.stdout
    assert "crm update: Phone applied" in shown.stdout
    assert "REQUIRED_FIELD_MISSING" in shown.stdout
    assert json.loads((await cli("timeline", "acme", LINK, "--json")).stdout)["entries"] == body["entries"]


async def test_the_cli_searches_and_exports(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)
    table = await cli("log", "acme", "--status", "rejected")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AT", "STATUS", "EVENT", "CODE", "RECORD", "WHAT"]
    assert [line.split()[3] for line in lines[1:]] == ["rejected", "rejected"]

    paged = await cli("log", "acme", "--limit", "3")
    assert paged.exit_code == 0
    assert len(paged.stdout.splitlines()) == 4
    assert "more rows: --all, or --cursor" in paged.stderr

    exported = await cli("log", "acme", "--all", "--limit", "2", "--csv", "--since", "2d")
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 8  # all but the three-day-old row, across four pages
    (quarantined,) = [row for row in rows if row["event"] == "pair.quarantined"]
    assert (quarantined["status"], json.loads(quarantined["detail"])) == ("info", {"pair": "partners"})
    scripted = json.loads((await cli("log", "acme", "--record", SF_ID_15, "--json")).stdout)
    assert scripted[0]["event"] == "write.rejected"


async def test_bad_input_gets_a_clear_error(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)
    viewer = bearer(await cli.token(Role.VIEWER))
    url = "/api/v1/tenants/acme/sync-log"
    cases: list[tuple[dict[str, str | int], str]] = [
        ({"status": "lost"}, "query.status[0]"),
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"since": "2026-12-07T10:00:00"}, "query.since"),
        ({"since": "2026-12-07T10:00:00Z", "until": "2026-12-06T10:00:00Z"}, "query.until"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"record": ""}, "query.record"),
    ]
    for params, field in cases:
        body = problem(await cli.api.http.get(url, params=params, headers=viewer), 422)
        assert [e["field"] for e in body["errors"]] == [field], (params, body)
    assert problem(await cli.api.http.get("/api/v1/tenants/nobody/sync-log", headers=bearer(cli.admin)), 404)
    missing = await cli.api.http.get("/api/v1/tenants/acme/records/p-404/timeline", headers=viewer)
    assert "p-404" in problem(missing, 404)["detail"]
    assert (await cli("log", "acme", "--status", "lost")).exit_code == 2
    assert (await cli("log", "acme", "--since", "yesterday")).exit_code == 2


async def test_scoped_and_authenticated(cli: Cli, sample: Path) -> None:
    await seed(cli, sample)
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/sync-log"), 401)
    other = bearer(await cli.token(Role.ADMIN, ["other"]))
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/sync-log", headers=other), 404)
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/records/p-1/timeline", headers=other), 404)


async def test_a_records_rows_are_found_by_index_among_many(cli: Cli, sample: Path) -> None:
    """The search and the timeline read a record's rows, not every row the tenant ever logged."""
    await seed(cli, sample)
    await cli.api.db.execute(
        "INSERT INTO sync_log (tenant_id, service, event, link_id, record_id)"
        " SELECT 'acme', 'writer', 'write.rejected', 'other-' || g, 'r-' || g FROM generate_series(1, 20000) g"
    )
    await cli.api.db.execute("ANALYZE sync_log")
    plans: list[str] = []

    def listener(_conn: object, message: Any) -> None:
        plans.append(message.message)

    db = cli.api.db
    db.add_log_listener(listener)
    try:
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET client_min_messages = log",
        ):
            await db.execute(setting)
        links = await links_of(db, "acme", SF_ID_15)
        rows, _ = await timeline(db, "acme", SF_ID_15, links, limit=10)
        await search(db, "acme", LogQuery(record=SF_ID_15), limit=10)
    finally:
        await db.execute("RESET ALL")
        db.remove_log_listener(listener)
    assert len(rows) == 5
    reads = [plan for plan in plans if "FROM sync_log" in plan]
    assert len(reads) == 2
    # The day's partition (the log is partitioned by day) is read through its copies of the indexes.
    today = f"sync_log_p{datetime.now(UTC):%Y%m%d}"
    for plan in reads:
        assert f"{today}_tenant_id_record_id_at_idx" in plan, plan
        assert f"{today}_tenant_id_link_id_at_idx" in plan, plan
        assert f"Seq Scan on {today}" not in plan, plan

"""``GET /api/v1/tenants/{tenant}/health`` and ``duplex health``: quarantined pairs and the last day's
problems, from the sync log rows mapping and the writer write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.admin.auth import Role
from services.common import sync_log
from services.common.schema import CrmField, CrmObject
from services.common.schema_store import save_described
from tests.integration.admin.conftest import Cli, sample_with
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration


async def log(cli: Cli, event: str, *, code: str | None = None, at: datetime | None = None, **detail: object) -> None:
    await sync_log.record(
        cli.api.db,
        tenant_id="acme",
        service="mapping",
        event=event,
        code=code,
        message=f"{event} {detail.get('pair', '')}".strip(),
        detail=detail,
    )
    if at is not None:
        await cli.api.db.execute("UPDATE sync_log SET at = $1 WHERE id = (SELECT max(id) FROM sync_log)", at)


async def test_health_shows_the_pairs_still_quarantined_and_the_last_days_problems(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    quiet = await cli("health", "acme")
    assert quiet.exit_code == 0
    assert quiet.stdout.splitlines()[0] == "tenant/acme: ok (configuration version 1)"

    await log(cli, "pair.quarantined", code="QUARANTINED", pair="partners", configuration_version=1)
    await log(cli, "pair.quarantined", code="QUARANTINED", pair="partner_contacts", configuration_version=1)
    await log(cli, "pair.released", pair="partner_contacts", configuration_version=1)
    await log(cli, "pair.quarantined", code="QUARANTINED", pair="crm:Lead", configuration_version=1)
    for _ in range(3):
        await log(cli, "write.rejected", code="REQUIRED_FIELD_MISSING")
    await log(cli, "write.rejected", code="STRING_TOO_LONG", at=datetime.now(UTC) - timedelta(days=2))
    await log(cli, "write.succeeded")

    answer = await cli.api.http.get("/api/v1/tenants/acme/health", headers=bearer(await cli.token(Role.VIEWER)))

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "attention"
    assert [p["pair"] for p in body["quarantinedPairs"]] == ["crm:Lead", "partners"]
    # Most first, then by event: the two-day-old rejection and the success are not problems of today.
    assert [(p["event"], p["code"], p["count"]) for p in body["problems"]] == [
        ("pair.quarantined", "QUARANTINED", 3),
        ("write.rejected", "REQUIRED_FIELD_MISSING", 3),
    ]

    shown = await cli("health", "acme")
    assert shown.exit_code == 0
    assert "partners" in shown.stdout
    assert "REQUIRED_FIELD_MISSING" in shown.stdout
    scripted = json.loads((await cli("health", "acme", "--json")).stdout)
    assert (scripted["quarantinedPairs"], scripted["problems"]) == (body["quarantinedPairs"], body["problems"])

    # A new configuration version ends every quarantine begun under an older one.
    newer = sample.with_name("newer.yaml")
    newer.write_text(sample_with("dailyApiCap: 5000", "dailyApiCap: 4000"))
    assert (await cli("config", "apply", "-f", str(newer))).exit_code == 0
    after = (await cli.api.http.get("/api/v1/tenants/acme/health", headers=bearer(cli.admin))).json()
    assert (after["configurationVersion"], after["quarantinedPairs"]) == (2, [])


async def test_health_is_tenant_scoped_and_authenticated(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0

    assert problem(await cli.api.http.get("/api/v1/tenants/acme/health"), 401)
    other = bearer(await cli.token(Role.ADMIN, ["other"]))
    assert problem(await cli.api.http.get("/api/v1/tenants/acme/health", headers=other), 404)
    assert problem(await cli.api.http.get("/api/v1/tenants/nobody/health", headers=bearer(cli.admin)), 404)


async def test_health_tells_the_last_sync_each_way_the_budget_the_objects_and_the_drift(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    body = json.loads((await cli("health", "acme", "--json")).stdout)
    assert body["lastSync"] == {"toCrm": None, "toApp": None, "toCrmLagSeconds": None, "toAppLagSeconds": None}
    assert body["budget"] is None
    assert {o["object"]: o["mode"] for o in body["objects"]} == {"Account": "unknown", "Contact": "unknown"}
    assert body["drift"] == []
    assert body["jobs"] == []

    await log(cli, "write.succeeded", count=3)
    await log(cli, "change.resolved", writes={"app": {"kind": "update", "fields": ["name"]}})
    await log(cli, "change.resolved", writes={"app": {"kind": "update", "fields": ["name"], "held": True}})
    now = datetime.now(UTC)
    ledger = {(now - timedelta(minutes=m)).isoformat(): 2_300 for m in (1, 2)}
    state = {"ledger": ledger, "org": {"used": 14_000, "max": 15_000, "observedAt": now.isoformat()}}
    await cli.api.db.execute(
        "INSERT INTO governor_budgets (tenant_id, state) VALUES ('acme', $1::jsonb)", json.dumps(state)
    )
    # Account is described without a field the sample maps, and not selected for CDC.
    account = CrmObject("Account", "Account", fields=(CrmField("Name", "Account Name", "string", 255),))
    await save_described(cli.api.db, "acme", "Account", account, cdc_selected=False)
    # A poll under way (Account is polled) and one finished: only the first is shown.
    polling = await cli("run", "acme", "poll", "partners")
    assert polling.exit_code == 0, polling.output
    await cli.api.db.execute("UPDATE jobs SET status = 'running', started_at = now(), done = 5, estimated = 20")
    await cli.api.db.execute(
        "INSERT INTO jobs (tenant_id, kind, object_pair, object, status, trigger, finished_at)"
        " VALUES ('acme', 'backfill', 'partners', 'Account', 'succeeded', 'start', now())"
    )

    body = json.loads((await cli("health", "acme", "--json")).stdout)
    assert [(j["kind"], j["status"], j["percent"]) for j in body["jobs"]] == [("poll", "running", 25.0)]
    assert body["lastSync"]["toCrm"] is not None
    assert body["lastSync"]["toApp"] is not None
    assert (body["budget"]["callsLastDay"], body["budget"]["orgUsed"], body["budget"]["low"]) == (4_600, 14_000, True)
    viewer = bearer(await cli.token(Role.VIEWER))
    hourly = (await cli.api.http.get("/api/v1/tenants/acme/throughput", headers=viewer)).json()
    # A batch of three records written, one update published (the held one is not).
    assert (hourly["hours"], hourly["toCrm"][-1], hourly["toApp"][-1]) == (24, 3, 1)
    assert sum(hourly["toCrm"]) + sum(hourly["toApp"]) == 4
    week = await cli.api.http.get("/api/v1/tenants/acme/throughput", params={"hours": 169}, headers=viewer)
    assert [e["field"] for e in problem(week, 422)["errors"]] == ["query.hours"]
    # Both minutes fall in the current hour, the last of the 24.
    assert body["budget"]["callsByHour"] == [0] * 23 + [4_600]
    assert {o["object"]: o["mode"] for o in body["objects"]} == {"Account": "polling", "Contact": "unknown"}
    assert any(w["paused"] and w["salesforceField"] == "Website" for w in body["drift"])
    assert body["status"] == "attention"
    shown = (await cli("health", "acme")).stdout
    assert "API calls: 4,600 of 5,000 in 24 h; org 14,000 of 15,000 used (LOW: under 10 % left)" in shown
    assert "objects: Account (polling), Contact (unknown)" in shown
    assert shown.rstrip().endswith("of partners running, 25 %")

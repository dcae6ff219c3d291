"""``GET /api/v1/overview``: every tenant's card in one call, agreeing with each tenant's ``/health``;
the problems the two count (a conflict's decision is none, a rejected write one), and the lag of the
last sync each way and of each hour's throughput."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.admin.auth import Role
from services.common.schema import CrmField, CrmObject
from services.common.schema_store import save_described
from tests.integration.admin.conftest import sample_with
from tests.integration.admin_api.harness import Api, bearer, problem

pytestmark = pytest.mark.integration

TENANTS = ("acme", "beta", "gamma", "delta")


async def log(
    api: Api,
    tenant: str,
    event: str,
    *,
    service: str = "writer",
    code: str | None = None,
    ago: timedelta = timedelta(minutes=1),
    **detail: Any,
) -> None:
    """A sync-log row as a service writes it, ``ago`` before now."""
    await api.db.execute(
        "INSERT INTO sync_log (at, tenant_id, service, event, code, message, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        datetime.now(UTC) - ago,
        tenant,
        service,
        event,
        code,
        event,
        json.dumps(detail),
    )


async def budget(api: Api, tenant: str, calls: int) -> None:
    now = datetime.now(UTC)
    state = {"ledger": {(now - timedelta(minutes=1)).isoformat(): calls}}
    await api.db.execute(
        "INSERT INTO governor_budgets (tenant_id, state) VALUES ($1, $2::jsonb)", tenant, json.dumps(state)
    )


async def apply_all(api: Api) -> str:
    admin = await api.token(name="set-up")
    for name in TENANTS:
        # Each its own org and client name, as two tenants must not share them.
        text = sample_with("name: acme\n", f"name: {name}\n")
        text = text.replace("https://acme.my", f"https://{name}.my").replace("duplex-acme", f"duplex-{name}")
        assert (await api.apply(admin, text, name)).status_code == 201
    return admin


async def get(api: Api, path: str, token: str, **params: Any) -> Any:
    answer = await api.http.get(path, params=params, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_every_card_agrees_with_its_tenants_health(api: Api) -> None:
    await apply_all(api)
    # acme: quiet. beta: problems, a quarantined pair, a pause and a job waiting.
    await log(api, "beta", "write.rejected", code="REQUIRED_FIELD_MISSING")
    await log(api, "beta", "change.rejected", service="mapping", code="INVALID_VALUE")
    await log(api, "beta", "change.rejected", service="mapping", code="INVALID_VALUE")
    await log(
        api, "beta", "pair.quarantined", service="mapping", code="QUARANTINED", pair="partners", configuration_version=1
    )
    await api.db.execute(
        "INSERT INTO sync_pauses (tenant_id, object_pair, direction, actor) VALUES ('beta', 'partners', 'to_app', 'x')"
    )
    await api.db.execute(
        "INSERT INTO jobs (tenant_id, kind, object_pair, object, status, trigger)"
        " VALUES ('beta', 'poll', 'partners', 'Account', 'requested', 'operator'),"
        " ('beta', 'backfill', 'partners', 'Account', 'succeeded', 'start')"
    )
    # gamma: connected, syncing both ways with lags, its budget low.
    await api.db.execute(
        "INSERT INTO salesforce_connections (tenant_id, status, org_id) VALUES ('gamma', 'connected', '00D5g0000001')"
    )
    await log(api, "gamma", "write.succeeded", count=4, lag_ms=1_200)
    await log(
        api, "gamma", "change.resolved", service="conflict-resolver", writes={"app": {"kind": "update"}}, lag_ms=800
    )
    await budget(api, "gamma", 4_900)
    await budget(api, "acme", 10)
    # delta: Account described without a field the sample maps (a rule paused by drift), not streamed.
    account = CrmObject("Account", "Account", fields=(CrmField("Name", "Account Name", "string", 255),))
    await save_described(api.db, "delta", "Account", account, cdc_selected=False)

    viewer = await api.token(Role.VIEWER)
    cards = {c["name"]: c for c in (await get(api, "/api/v1/overview", viewer))["tenants"]}

    assert list(cards) == sorted(TENANTS)
    assert {name: c["status"] for name, c in cards.items()} == {
        "acme": "ok",
        "beta": "attention",
        "gamma": "attention",
        "delta": "attention",
    }
    for name in TENANTS:
        card = cards[name]
        health = await get(api, f"/api/v1/tenants/{name}/health", viewer)
        connection = await get(api, f"/api/v1/tenants/{name}/connection", viewer)
        assert card["status"] == health["status"], name
        assert card["configurationVersion"] == health["configurationVersion"] == 1
        assert card["configurationError"] is None
        assert card["errors"] == sum(p["count"] for p in health["problems"]), name
        assert card["quarantinedPairs"] == len(health["quarantinedPairs"]), name
        assert card["pauses"] == len(health["pauses"]), name
        assert card["activeJobs"] == len(health["jobs"]), name
        assert card["lastSync"] == health["lastSync"], name
        assert card["objects"] == health["objects"], name
        assert card["connection"] == {"status": connection["status"], "orgId": connection["orgId"]}, name
        if health["budget"] is None:
            assert card["budget"] is None, name
        else:
            wanted = {k: health["budget"][k] for k in ("callsLastDay", "dailyApiCap", "low")}
            assert card["budget"] == wanted, name
    # What the comparisons compared is not all empty.
    assert (cards["beta"]["errors"], cards["beta"]["quarantinedPairs"]) == (4, 1)
    assert (cards["beta"]["pauses"], cards["beta"]["activeJobs"]) == (1, 1)
    assert cards["gamma"]["connection"] == {"status": "connected", "orgId": "00D5g0000001"}
    assert cards["gamma"]["budget"] == {"callsLastDay": 4_900, "dailyApiCap": 5_000, "low": True}
    assert cards["gamma"]["lastSync"]["toCrmLagSeconds"] == 1.2
    assert cards["acme"]["budget"] == {"callsLastDay": 10, "dailyApiCap": 5_000, "low": False}
    assert cards["acme"]["connection"] == {"status": "not_connected", "orgId": None}
    assert {o["object"]: o["mode"] for o in cards["delta"]["objects"]} == {"Account": "polling", "Contact": "unknown"}
    assert cards["delta"]["errors"] == 0


async def test_a_scoped_caller_sees_only_its_tenants(api: Api) -> None:
    await apply_all(api)
    scoped = await api.token(Role.VIEWER, ["gamma", "beta", "elsewhere"])
    assert [c["name"] for c in (await get(api, "/api/v1/overview", scoped))["tenants"]] == ["beta", "gamma"]
    elsewhere = await api.token(Role.ADMIN, ["elsewhere"])
    assert (await get(api, "/api/v1/overview", elsewhere))["tenants"] == []
    # A deleted tenant has no card.
    admin = await api.token()
    assert (await api.http.delete("/api/v1/tenants/delta", headers=bearer(admin))).status_code < 300
    assert [c["name"] for c in (await get(api, "/api/v1/overview", admin))["tenants"]] == ["acme", "beta", "gamma"]
    assert problem(await api.http.get("/api/v1/overview"), 401)


async def test_a_conflicts_decision_is_no_problem_and_a_rejected_write_counts_once(api: Api) -> None:
    await apply_all(api)
    # conflict.decided carries the policy in its code: a decision, not an error.
    await log(api, "acme", "conflict.decided", service="conflict-resolver", code="newest_wins", field="name")
    # One write Salesforce rejected: the writer's row, and the conflict-resolver's as it rolls back.
    await log(api, "acme", "write.rejected", code="STRING_TOO_LONG", errors=["STRING_TOO_LONG"], attempts=1)
    await log(
        api,
        "acme",
        "write.rejected",
        service="conflict-resolver",
        code="STRING_TOO_LONG",
        version=3,
        rolled_back=["name"],
        errors=[{"code": "STRING_TOO_LONG", "message": "too long", "fields": []}],
    )
    viewer = await api.token(Role.VIEWER)

    health = await get(api, "/api/v1/tenants/acme/health", viewer)
    card = next(c for c in (await get(api, "/api/v1/overview", viewer))["tenants"] if c["name"] == "acme")

    assert [(p["event"], p["code"], p["count"]) for p in health["problems"]] == [
        ("write.rejected", "STRING_TOO_LONG", 1)
    ]
    assert card["errors"] == 1
    # Only the decision: nothing to attend to.
    await log(api, "beta", "conflict.decided", service="conflict-resolver", code="app_wins", field="name")
    beta = next(c for c in (await get(api, "/api/v1/overview", viewer))["tenants"] if c["name"] == "beta")
    assert (beta["status"], beta["errors"]) == ("ok", 0)
    assert (await get(api, "/api/v1/tenants/beta/health", viewer))["problems"] == []


async def test_the_last_sync_each_way_and_each_hour_carry_the_lag(api: Api) -> None:
    await apply_all(api)
    resolver = "conflict-resolver"
    resolved: dict[str, Any] = {"writes": {"app": {"kind": "update", "fields": ["name"]}}}
    # Two hours and more ago, in one hour: the larger lag is that hour's.
    await log(api, "acme", "write.succeeded", ago=timedelta(hours=2, minutes=20), count=2, lag_ms=5_000)
    await log(api, "acme", "write.succeeded", ago=timedelta(hours=2, minutes=10), count=1, lag_ms=250)
    await log(
        api, "acme", "change.resolved", service=resolver, ago=timedelta(hours=2, minutes=15), lag_ms=40_000, **resolved
    )
    # A row written before lags were logged has none.
    await log(api, "acme", "write.succeeded", ago=timedelta(minutes=30), count=1)
    await log(api, "acme", "write.succeeded", ago=timedelta(minutes=5), count=3, lag_ms=1_200)
    await log(api, "acme", "change.resolved", service=resolver, ago=timedelta(minutes=6), lag_ms=800, **resolved)
    # Newer, but held by a pause: no update went to the app, and its lag is not the last sync's.
    held = {"app": {"kind": "update", "held": True}}
    await log(api, "acme", "change.resolved", service=resolver, ago=timedelta(minutes=1), lag_ms=99_000, writes=held)
    # beta's last sync each way is older than lags: known to have happened, its lag unknown.
    await log(api, "beta", "write.succeeded", ago=timedelta(minutes=2), count=1)
    await log(api, "beta", "change.resolved", service=resolver, ago=timedelta(minutes=2), **resolved)
    viewer = await api.token(Role.VIEWER)

    health = await get(api, "/api/v1/tenants/acme/health", viewer)
    hourly = await get(api, "/api/v1/tenants/acme/throughput", viewer)
    cards = {c["name"]: c for c in (await get(api, "/api/v1/overview", viewer))["tenants"]}

    last = health["lastSync"]
    assert (last["toCrmLagSeconds"], last["toApp"] is not None, last["toAppLagSeconds"]) == (1.2, True, 0.8)
    assert cards["acme"]["lastSync"] == last
    beta = cards["beta"]["lastSync"]
    assert (beta["toCrm"] is not None, beta["toCrmLagSeconds"], beta["toAppLagSeconds"]) == (True, None, None)
    assert cards["gamma"]["lastSync"] == {
        "toCrm": None,
        "toApp": None,
        "toCrmLagSeconds": None,
        "toAppLagSeconds": None,
    }
    # Hour 21 of 24 (oldest first) holds the rows of 2 h 10 to 2 h 20 ago; the last, the last hour's.
    assert hourly["toCrmLagSeconds"][21] == 5.0
    assert hourly["toAppLagSeconds"][21] == 40.0
    assert hourly["toCrmLagSeconds"][23] == 1.2
    assert hourly["toAppLagSeconds"][23] == 0.8
    assert [i for i, lag in enumerate(hourly["toCrmLagSeconds"]) if lag is not None] == [21, 23]
    assert [i for i, lag in enumerate(hourly["toAppLagSeconds"]) if lag is not None] == [21, 23]
    assert (hourly["toCrm"][21], hourly["toCrm"][23]) == (3, 4)


async def test_a_new_configuration_version_shows_on_the_next_overview(api: Api) -> None:
    admin = await apply_all(api)
    await budget(api, "beta", 100)
    before = {c["name"]: c for c in (await get(api, "/api/v1/overview", admin))["tenants"]}
    assert (before["beta"]["configurationVersion"], before["beta"]["budget"]["dailyApiCap"]) == (1, 5_000)

    text = sample_with("name: acme\n", "name: beta\n").replace("https://acme.my", "https://beta.my")
    text = text.replace("duplex-acme", "duplex-beta").replace("dailyApiCap: 5000", "dailyApiCap: 105")
    assert (await api.apply(admin, text, "beta")).status_code == 200

    after = {c["name"]: c for c in (await get(api, "/api/v1/overview", admin))["tenants"]}
    assert (after["beta"]["configurationVersion"], after["beta"]["budget"]) == (
        2,
        {"callsLastDay": 100, "dailyApiCap": 105, "low": True},
    )
    assert after["beta"]["status"] == "attention"
    assert after["acme"] == before["acme"]


async def test_a_configuration_that_no_longer_validates_is_a_card_saying_so(api: Api) -> None:
    admin = await apply_all(api)
    # As if the schema had tightened after delta's version was stored.
    await api.db.execute(
        "UPDATE config_history SET document = document #- '{spec,salesforce}' WHERE tenant_id = 'delta'"
    )

    cards = {c["name"]: c for c in (await get(api, "/api/v1/overview", admin))["tenants"]}

    assert list(cards) == sorted(TENANTS)
    delta = cards["delta"]
    assert (delta["status"], delta["objects"], delta["budget"]) == ("attention", [], None)
    assert "salesforce" in delta["configurationError"]
    assert cards["acme"]["configurationError"] is None
    assert problem(await api.http.get("/api/v1/tenants/delta/health", headers=bearer(admin)), 500)


async def test_a_new_describe_shows_on_the_next_overview(api: Api) -> None:
    admin = await apply_all(api)
    account = CrmObject("Account", "Account", fields=(CrmField("Name", "Account Name", "string", 255),))
    await save_described(api.db, "delta", "Account", account, cdc_selected=False)
    before = {c["name"]: c for c in (await get(api, "/api/v1/overview", admin))["tenants"]}
    assert before["delta"]["status"] == "attention"  # rules paused by the drift

    mapped = (
        "Name",
        "Website",
        "Phone",
        "Partner_Status__c",
        "Tier__c",
        "Industries__c",
        "AnnualRevenue",
        "Archived__c",
        "Description",
        "NumberOfEmployees",
        "ParentId",
        "Partner_Since__c",
        "Duplex_Id__c",
        "SystemModstamp",
    )
    whole = CrmObject("Account", "Account", fields=tuple(CrmField(f, f, "string", 255) for f in mapped))
    await save_described(api.db, "delta", "Account", whole, cdc_selected=False)

    after = {c["name"]: c for c in (await get(api, "/api/v1/overview", admin))["tenants"]}
    health = await get(api, "/api/v1/tenants/delta/health", admin)
    assert [w for w in health["drift"] if w["paused"]] == []
    assert after["delta"]["status"] == health["status"] == "ok"
    assert after["delta"]["objects"] == health["objects"]
    assert {o["object"]: o["mode"] for o in after["delta"]["objects"]}["Account"] == "polling"

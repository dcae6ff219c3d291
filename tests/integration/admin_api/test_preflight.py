"""The preflight check against the emulator process: a tenant connected through the connect flow
passes every check on an org set up for it; each thing an org admin can break (a field made
read-only, the external id no longer unique, an object out of the CDC selection, a field deleted)
then fails its own check with its fix, and nothing else fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.admin.auth import Role
from tests.integration.admin_api.connecting import DUPLEX_ID, SAMPLE_FIELDS, TIER, Connecting, Org
from tests.integration.admin_api.harness import bearer

pytestmark = pytest.mark.integration

CALL_OPTIONS_CLIENT = "duplex-test"


async def check(connecting: Connecting, tenant: str, token: str | None = None) -> Any:
    answer = await connecting.api.http.post(
        f"/api/v1/tenants/{tenant}/connection:check", headers=bearer(token or connecting.admin)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def failures(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["name"]: (c["detail"], c["fix"]) for c in result["checks"] if not c["ok"]}


def calls_by_duplex(connecting: Connecting, org: Org) -> int:
    usage = connecting.emulator.admin("GET", f"/orgs/{org.org_id}/usage").json()
    return int(usage["by_client"].get(CALL_OPTIONS_CLIENT, 0))


@pytest.fixture
async def ready(connecting: Connecting, orgs: tuple[Org, Org]) -> Org:
    """The sample tenant "acme", connected to an org with every field it maps."""
    org = orgs[0]
    for sobject, fields in SAMPLE_FIELDS.items():
        connecting.emulator.admin("PUT", f"/orgs/{org.org_id}/objects/{sobject}", {"fields": fields})
    await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    return org


async def test_a_connected_tenant_on_a_ready_org_passes_every_check(connecting: Connecting, ready: Org) -> None:
    before = calls_by_duplex(connecting, ready)

    result = await check(connecting, "acme")

    assert result["tenant"] == "acme"
    assert failures(result) == {}
    assert result["ok"] is True
    names = [c["name"] for c in result["checks"]]
    assert names[:3] == ["API access", "API limits", "Account: readable"]
    assert names[-2:] == ["Account: Change Data Capture", "Contact: Change Data Capture"]
    assert "Contact: createable, updateable and deletable" in names
    assert all(c["fix"] is None for c in result["checks"])
    access, limits = result["checks"][:2]
    assert access["detail"] == (
        f"signed in to {connecting.emulator.instance_url} with the session the connect flow keeps in the vault"
    )
    # One /limits, two describes, one Tooling query: all stamped as Duplex's and counted by the org.
    assert calls_by_duplex(connecting, ready) - before == 4
    assert limits["detail"].startswith("DailyApiRequests: ")
    assert "dailyApiCap allows Duplex 5,000 a day" in limits["detail"]
    assert limits["detail"].endswith("this check made 4 API calls")

    token_id = await connecting.api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'connector'")
    audit = await connecting.api.db.fetch(
        "SELECT actor, tenant_id, detail FROM audit_log WHERE action = 'connection.checked'"
    )
    assert [(a["actor"], a["tenant_id"]) for a in audit] == [(f"connector (token {token_id})", "acme")]
    assert json.loads(audit[0]["detail"]) == {"ok": True, "failed": [], "apiCalls": 4}


@pytest.mark.parametrize(
    ("method", "path", "body", "name", "detail", "fix"),
    [
        pytest.param(
            "PUT",
            "objects/Account",
            {"fields": [{**TIER, "readonly": True}]},
            "Account: field Tier__c",
            "Tier__c exists (picklist) but is not createable or updateable for the integration user; Duplex writes it",
            "grant Edit on Account.Tier__c to the integration user (field-level security), or set"
            " spec.objects[0].fields[4].direction to crm_to_app",
            id="field not updateable",
        ),
        pytest.param(
            "PUT",
            "objects/Account",
            {"fields": [{**DUPLEX_ID, "unique": False}]},
            "Account: external id Duplex_Id__c",
            "Duplex_Id__c is not Unique: two Account records could carry the same Duplex id, and upserts on it would"
            " no longer find one record",
            "Setup → Object Manager → Account → Fields & Relationships → Duplex_Id__c → Edit: tick Unique (after"
            " removing duplicate values)",
            id="external id not unique",
        ),
        pytest.param(
            "PUT",
            "objects/Account",
            {"cdc_enabled": False},
            "Account: Change Data Capture",
            "AccountChangeEvent is not selected for Change Data Capture: cdc-ingest polls Account every 30 s",
            "Setup → Change Data Capture → add Account to Selected Entities (until then, and until cdc-ingest"
            " restarts, Duplex polls it every 30 s)",
            id="object out of the CDC selection",
        ),
        pytest.param(
            "DELETE",
            "objects/Account/fields/Partner_Since__c",
            None,
            "Account: field Partner_Since__c",
            "Account has no field Partner_Since__c (or the integration user cannot see it)",
            "create Partner_Since__c on Account (or grant the integration user Read on it), or correct"
            " spec.objects[0].fields[8].salesforce",
            id="missing field",
        ),
    ],
)
async def test_what_an_org_admin_breaks_fails_its_check_with_its_fix(
    connecting: Connecting,
    ready: Org,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    name: str,
    detail: str,
    fix: str,
) -> None:
    assert (await check(connecting, "acme"))["ok"] is True

    connecting.emulator.admin(method, f"/orgs/{ready.org_id}/{path}", body)
    result = await check(connecting, "acme")

    assert result["ok"] is False
    assert failures(result) == {name: (detail, fix)}
    audit = await connecting.api.db.fetch(
        "SELECT detail FROM audit_log WHERE action = 'connection.checked' ORDER BY id"
    )
    assert [json.loads(a["detail"])["failed"] for a in audit] == [[], [name]]


async def test_a_tenant_not_connected_yet_fails_the_first_check_without_calling_salesforce(
    connecting: Connecting, orgs: tuple[Org, Org]
) -> None:
    org = orgs[0]
    await connecting.add_tenant("acme", org)

    result = await check(connecting, "acme")

    assert result["ok"] is False
    first = result["checks"][0]
    assert (first["name"], first["ok"]) == ("API access", False)
    assert first["fix"] == "connect it: POST /api/v1/tenants/acme/connection:authorize"
    assert {(c["detail"], c["fix"]) for c in result["checks"][1:]} == {
        ("not checked: Duplex could not sign in to the org", "fix 'API access' first, then check again")
    }
    assert calls_by_duplex(connecting, org) == 0


async def test_operators_may_check_viewers_may_not_and_other_tenants_do_not_exist(
    connecting: Connecting, ready: Org
) -> None:
    operator = await connecting.api.token(Role.OPERATOR, ["acme"])
    assert (await check(connecting, "acme", operator))["ok"] is True

    viewer = await connecting.api.token(Role.VIEWER, ["acme"])
    refused = await connecting.api.http.post("/api/v1/tenants/acme/connection:check", headers=bearer(viewer))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"

    elsewhere = await connecting.api.token(Role.ADMIN, ["globex"])
    hidden = await connecting.api.http.post("/api/v1/tenants/acme/connection:check", headers=bearer(elsewhere))
    missing = await connecting.api.http.post("/api/v1/tenants/nope/connection:check", headers=bearer(connecting.admin))
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert hidden.json()["detail"] == "no tenant 'acme'"

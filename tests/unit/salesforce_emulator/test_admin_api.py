"""The admin API and the API gateway, in process: faults, usage, schema, tokens, events."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator
from tests.unit.salesforce_emulator.sessions import bearer, login

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
LIMITS = "/services/data/v62.0/limits/"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}])
def test_admin_routes_need_the_admin_token(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/__emulator__/orgs", headers=headers)
    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_orgs_are_listed_and_found_by_alias(client: TestClient, emulator: Emulator) -> None:
    listed = client.get("/__emulator__/orgs", headers=ADMIN).json()
    assert [o["alias"] for o in listed] == ["acme", "globex"]
    acme = client.get("/__emulator__/orgs/acme", headers=ADMIN).json()
    assert acme["org_id"] == emulator.default_org.org_id
    assert acme["api_usage"] == {"used": 0, "max": 15000}
    assert client.get("/__emulator__/orgs/nope", headers=ADMIN).status_code == 404


def test_every_api_response_carries_usage_and_the_limit_fault_refuses(client: TestClient) -> None:
    token = login(client)
    first = client.get(LIMITS, headers=bearer(token))
    assert first.status_code == 200
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    assert first.json()["DailyApiRequests"] == {"Max": 15000, "Remaining": 14999}
    patched = client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"api_limit": 2})
    assert patched.json()["api_limit"] == 2
    assert client.get(LIMITS, headers=bearer(token)).headers["Sforce-Limit-Info"] == "api-usage=2/2"
    refused = client.get(LIMITS, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=2/2"
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"api_limit": None})
    assert client.get(LIMITS, headers=bearer(token)).status_code == 200


def test_usage_by_others_shows_in_the_header(client: TestClient) -> None:
    token = login(client)
    added = client.post("/__emulator__/orgs/acme/usage", headers=ADMIN, json={"requests": 500})
    assert added.json() == {"used": 500, "max": 15000}
    assert client.get(LIMITS, headers=bearer(token)).headers["Sforce-Limit-Info"] == "api-usage=501/15000"


def test_missing_expired_and_revoked_sessions_get_401(client: TestClient) -> None:
    expected = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    no_token = client.get(LIMITS)
    assert (no_token.status_code, no_token.json()) == (401, expected)
    assert "Sforce-Limit-Info" not in no_token.headers
    token = login(client)
    assert client.post("/__emulator__/orgs/acme/tokens/expire", headers=ADMIN).json()["expired"] == 1
    expired = client.get(LIMITS, headers=bearer(token))
    assert (expired.status_code, expired.json()) == (401, expected)
    other = login(client)
    assert client.post("/services/oauth2/revoke", data={"token": other}).status_code == 200
    assert client.get(LIMITS, headers=bearer(other)).status_code == 401


def test_outage_and_latency_faults(client: TestClient) -> None:
    token = login(client)
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 1.0})
    down = client.get(LIMITS, headers=bearer(token))
    assert down.status_code == 503
    assert down.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 0.0, "latency_ms": 150})
    started = time.monotonic()
    assert client.get(LIMITS, headers=bearer(token)).status_code == 200
    assert time.monotonic() - started >= 0.15
    reset = client.post("/__emulator__/orgs/acme/reset", headers=ADMIN).json()
    assert reset["faults"]["latency_ms"] == 0
    assert reset["api_usage"]["used"] == 0


def test_invalid_fault_values_are_refused(client: TestClient) -> None:
    assert client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"lock_ratio": 2}).status_code == 422
    assert client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"bogus": 1}).status_code == 422


def test_custom_objects_and_fields_at_runtime(client: TestClient, emulator: Emulator) -> None:
    body = {
        "label": "Widget",
        "fields": [{"name": "Size__c", "type": "int"}, {"name": "Ext__c", "type": "string", "external_id": True}],
    }
    created = client.put("/__emulator__/orgs/acme/objects/Widget__c", headers=ADMIN, json=body)
    assert created.status_code == 200, created.text
    assert created.json()["key_prefix"] == "a01"  # Partner_Tier__c from the seed is a00
    assert {"Id", "Name", "Size__c", "Ext__c"} <= set(created.json()["fields"])
    widget = emulator.orgs.schema_for(emulator.default_org.org_id)["Widget__c"]
    assert [f.name for f in widget.external_id_fields] == ["Ext__c"]
    bad = client.put("/__emulator__/orgs/acme/objects/Widget", headers=ADMIN, json={})
    assert bad.status_code == 400


def test_new_orgs_and_users_can_log_in(client: TestClient) -> None:
    spec = {
        "alias": "initech",
        "edition": "enterprise",
        "licenses": 10,
        "users": [{"username": "peter@initech.example", "password": "tps"}],
        "clients": [{"name": "app", "client_id": "initech-app", "client_secret": "s3"}],
    }
    created = client.post("/__emulator__/orgs", headers=ADMIN, json=spec)
    assert created.status_code == 201, created.text
    assert created.json()["api_usage"]["max"] == 110000
    assert client.post("/__emulator__/orgs", headers=ADMIN, json=spec).status_code == 400
    response = client.post(
        "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "initech-app",
            "client_secret": "s3",
            "username": "peter@initech.example",
            "password": "tps",
        },
    )
    assert response.status_code == 200
    info = client.get("/services/oauth2/userinfo", headers=bearer(response.json()["access_token"])).json()
    assert info["organization_id"] == created.json()["org_id"]


def test_event_log_faults(client: TestClient, emulator: Emulator) -> None:
    org_id = emulator.default_org.org_id
    before = len(emulator.event_log.events(org_id))
    gap = client.post(
        "/__emulator__/orgs/acme/events/gap",
        headers=ADMIN,
        json={"entity": "Account", "record_ids": ["001000000000001AAA"], "change_type": "GAP_UPDATE"},
    )
    assert gap.status_code == 204, gap.text
    assert (
        client.post("/__emulator__/orgs/acme/events/overflow", headers=ADMIN, json={"entity": "Account"}).status_code
        == 204
    )
    assert len(emulator.event_log.events(org_id)) == before + 2
    purged = client.post(
        "/__emulator__/orgs/acme/events/purge", headers=ADMIN, json={"before_ms": int(time.time() * 1000) + 60_000}
    )
    assert purged.json()["purged"] == before + 2
    assert client.post("/__emulator__/orgs/acme/events/purge", headers=ADMIN, json={}).status_code == 422
    assert client.post("/__emulator__/orgs/acme/streams/drop", headers=ADMIN).json() == {"dropped": 0}


def test_reset_with_records_forgets_the_orgs_records_only(client: TestClient) -> None:
    token = login(client)
    created = client.post("/services/data/v62.0/sobjects/Account", headers=bearer(token), json={"Name": "Gone soon"})
    assert created.status_code == 201
    count = "/services/data/v62.0/query/?q=SELECT+COUNT()+FROM+Account"

    assert client.post("/__emulator__/orgs/acme/reset", headers=ADMIN).status_code == 200
    assert client.get(count, headers=bearer(token)).json()["totalSize"] == 1
    assert client.post("/__emulator__/orgs/acme/reset?records=true", headers=ADMIN).status_code == 200
    assert client.get(count, headers=bearer(token)).json()["totalSize"] == 0
    # Sessions and schema survive a records reset.
    assert (
        client.post("/services/data/v62.0/sobjects/Account", headers=bearer(token), json={"Name": "New"}).status_code
        == 201
    )

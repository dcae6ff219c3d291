"""The Tooling API query resource, in process through the API gateway: the org's CDC selection as
PlatformEventChannelMember rows, counted like any REST call, and Salesforce's errors for the rest."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.salesforce_emulator.sessions import bearer, login

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
TOOLING = "/services/data/v62.0/tooling/query/"
SELECTION = "SELECT Id, DeveloperName, EventChannel, SelectedEntity FROM PlatformEventChannelMember"


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    return bearer(login(client))


def query(client: TestClient, auth: dict[str, str], soql: str, path: str = TOOLING) -> Any:
    return client.get(path, params={"q": soql}, headers=auth)


def selected(client: TestClient, auth: dict[str, str]) -> list[str]:
    body = query(client, auth, f"{SELECTION} WHERE EventChannel = 'ChangeEvents'").json()
    return sorted(r["SelectedEntity"] for r in body["records"])


def test_the_selection_is_every_object_with_cdc_on_in_the_tooling_query_shape(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = query(client, auth, f"{SELECTION} WHERE EventChannel = 'ChangeEvents' ORDER BY SelectedEntity")
    assert response.status_code == 200, response.text
    body = response.json()
    # The seed turns CDC off for Case only; custom objects are named <Name>__ChangeEvent.
    events = [
        "AccountChangeEvent",
        "ContactChangeEvent",
        "LeadChangeEvent",
        "OpportunityChangeEvent",
        "Partner_Tier__ChangeEvent",
        "UserChangeEvent",
    ]
    assert [r["SelectedEntity"] for r in body["records"]] == events
    assert list(body) == ["size", "totalSize", "done", "queryLocator", "entityTypeName", "records"]
    assert body["size"] == body["totalSize"] == len(events)
    assert body["done"] is True
    assert body["queryLocator"] is None
    assert body["entityTypeName"] == "PlatformEventChannelMember"
    first = body["records"][0]
    assert first["attributes"] == {
        "type": "PlatformEventChannelMember",
        "url": f"/services/data/v62.0/tooling/sobjects/PlatformEventChannelMember/{first['Id']}",
    }
    assert first["Id"].startswith("0v8")
    assert len(first["Id"]) == 18
    assert first["DeveloperName"] == "ChangeEvents_AccountChangeEvent"
    assert first["EventChannel"] == "ChangeEvents"
    custom = body["records"][4]
    assert custom["DeveloperName"] == "ChangeEvents_Partner_Tier_ChangeEvent"
    # Ids are stable: the same member has the same id on every call.
    assert query(client, auth, SELECTION).json()["records"][0]["Id"] in {r["Id"] for r in body["records"]}


def test_the_selection_follows_the_orgs_cdc_switches(client: TestClient, auth: dict[str, str]) -> None:
    assert "CaseChangeEvent" not in selected(client, auth)
    on = client.put("/__emulator__/orgs/acme/objects/Case", headers=ADMIN, json={"cdc_enabled": True})
    assert on.status_code == 200, on.text
    off = client.put("/__emulator__/orgs/acme/objects/Contact", headers=ADMIN, json={"cdc_enabled": False})
    assert off.status_code == 200, off.text
    now = selected(client, auth)
    assert "CaseChangeEvent" in now
    assert "ContactChangeEvent" not in now
    created = client.put("/__emulator__/orgs/acme/objects/Ticket__c", headers=ADMIN, json={"label": "Ticket"})
    assert created.status_code == 200, created.text
    assert "Ticket__ChangeEvent" in selected(client, auth)


@pytest.mark.parametrize(
    ("soql", "events"),
    [
        (
            "SELECT SelectedEntity FROM PlatformEventChannelMember WHERE SelectedEntity = 'AccountChangeEvent'",
            ["AccountChangeEvent"],
        ),
        ("SELECT SelectedEntity FROM PlatformEventChannelMember WHERE EventChannel = 'SalesEvents__chn'", []),
        (
            "SELECT SelectedEntity FROM PlatformEventChannelMember WHERE SelectedEntity LIKE 'Partner%'",
            ["Partner_Tier__ChangeEvent"],
        ),
        (
            "SELECT SelectedEntity FROM PlatformEventChannelMember ORDER BY SelectedEntity DESC LIMIT 2",
            ["UserChangeEvent", "Partner_Tier__ChangeEvent"],
        ),
    ],
)
def test_filters_order_and_limit(client: TestClient, auth: dict[str, str], soql: str, events: list[str]) -> None:
    response = query(client, auth, soql)
    assert response.status_code == 200, response.text
    assert [r["SelectedEntity"] for r in response.json()["records"]] == events
    assert response.json()["size"] == len(events)


def test_count(client: TestClient, auth: dict[str, str]) -> None:
    body = query(client, auth, "SELECT COUNT() FROM PlatformEventChannelMember").json()
    assert body["totalSize"] == 6
    assert body["records"] == []


def test_tooling_queries_are_counted_and_limited_like_rest_calls(client: TestClient, auth: dict[str, str]) -> None:
    first = query(client, auth, SELECTION)
    second = query(client, auth, SELECTION)
    used = [int(r.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0]) for r in (first, second)]
    assert used[1] == used[0] + 1
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"api_limit": used[1]})
    refused = query(client, auth, SELECTION)
    assert refused.status_code == 403
    assert refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


@pytest.mark.parametrize(
    ("soql", "status", "code", "message_part"),
    [
        # The emulator's Tooling API knows one object; any other is answered as an unknown type.
        ("SELECT Id FROM ApexClass", 400, "INVALID_TYPE", "sObject type 'ApexClass' is not supported"),
        # Data objects are not Tooling objects.
        ("SELECT Id FROM Account", 400, "INVALID_TYPE", "sObject type 'Account' is not supported"),
        ("SELECT Id FROM PlatformEventChannel", 400, "INVALID_TYPE", "is not supported"),
        ("SELECT Nope FROM PlatformEventChannelMember", 400, "INVALID_FIELD", "No such column 'Nope'"),
        ("SELECT FROM PlatformEventChannelMember", 400, "MALFORMED_QUERY", ""),
        ("SELECT Id PlatformEventChannelMember", 400, "MALFORMED_QUERY", ""),
    ],
)
def test_other_queries_get_salesforces_errors(
    client: TestClient, auth: dict[str, str], soql: str, status: int, code: str, message_part: str
) -> None:
    response = query(client, auth, soql)
    assert response.status_code == status, response.text
    assert response.json()[0]["errorCode"] == code
    assert message_part in response.json()[0]["message"]


def test_missing_query_unknown_resources_and_versions(client: TestClient, auth: dict[str, str]) -> None:
    missing = client.get(TOOLING, headers=auth)
    assert missing.status_code == 400
    assert missing.json()[0]["errorCode"] == "MALFORMED_QUERY"
    for path in ("/services/data/v62.0/tooling/sobjects/PlatformEventChannelMember", "/services/data/v62.0/tooling/"):
        response = client.get(path, headers=auth)
        assert response.status_code == 404, path
        assert response.json()[0]["errorCode"] == "NOT_FOUND"
    retired = query(client, auth, SELECTION, path="/services/data/v30.0/tooling/query/")
    assert (retired.status_code, retired.json()[0]["errorCode"]) == (410, "GONE")
    unreleased = query(client, auth, SELECTION, path="/services/data/v99.0/tooling/query/")
    assert (unreleased.status_code, unreleased.json()[0]["errorCode"]) == (404, "NOT_FOUND")
    without_slash = query(client, auth, SELECTION, path="/services/data/v62.0/tooling/query")
    assert without_slash.status_code == 200


def test_without_a_session_the_call_is_refused(client: TestClient) -> None:
    response = client.get(TOOLING, params={"q": SELECTION})
    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_without_view_setup_the_object_is_not_visible(client: TestClient) -> None:
    user = {"username": "viewer@acme.example", "password": "viewer-password", "view_setup": False}
    assert client.post("/__emulator__/orgs/acme/users", headers=ADMIN, json=user).status_code == 201
    token = login(client, "viewer@acme.example", "viewer-password")
    response = query(client, {"Authorization": f"Bearer {token}"}, SELECTION)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_TYPE"
    assert "sObject type 'PlatformEventChannelMember' is not supported" in response.json()[0]["message"]
    # The same user still reads data: only setup objects are hidden.
    data = client.get(
        "/services/data/v62.0/query/",
        params={"q": "SELECT Id FROM Account"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert data.status_code == 200

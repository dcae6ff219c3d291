"""The ambiguous commit fault: the write is applied, its answer is lost (a 503, or a dropped connection)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import InjectedDisconnectError

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
API = "/services/data/v62.0"
FAULTS = "/__emulator__/orgs/acme/faults"


def login(client: TestClient) -> dict[str, str]:
    form = {
        "grant_type": "password",
        "client_id": "duplex-acme-client",
        "client_secret": "duplex-acme-secret",
        "username": "admin@acme.example",
        "password": "acme-dev-password",
    }
    response = client.post("/services/oauth2/token", data=form)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def names(client: TestClient, auth: dict[str, str], prefix: str) -> list[str]:
    query = f"SELECT Name FROM Account WHERE Name LIKE '{prefix}%' ORDER BY Name"
    response = client.get(f"{API}/query", params={"q": query}, headers=auth)
    assert response.status_code == 200, response.text
    return [r["Name"] for r in response.json()["records"]]


def test_an_ambiguous_commit_applies_the_write_and_answers_503(client: TestClient) -> None:
    auth = login(client)
    view = client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 1.0}).json()
    assert (view["ambiguous_commit_ratio"], view["ambiguous_commit_mode"]) == (1.0, "unavailable")

    lost = client.post(f"{API}/sobjects/Account", json={"Name": "Lost answer"}, headers=auth)

    assert lost.status_code == 503
    assert lost.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert "Sforce-Limit-Info" in lost.headers
    # Reads are not writes: their answers arrive, and show the write committed.
    assert names(client, auth, "Lost answer") == ["Lost answer"]


def test_a_disconnect_applies_the_write_and_drops_the_connection(client: TestClient) -> None:
    auth = login(client)
    client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 1.0, "ambiguous_commit_mode": "disconnect"})

    with pytest.raises(InjectedDisconnectError):
        client.post(f"{API}/sobjects/Account", json={"Name": "Dropped answer"}, headers=auth)

    assert names(client, auth, "Dropped answer") == ["Dropped answer"]


def test_a_refused_write_is_answered_as_it_is(client: TestClient) -> None:
    auth = login(client)
    client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 1.0})

    refused = client.post(f"{API}/sobjects/Account", json={"Bogus__c": "x"}, headers=auth)

    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INVALID_FIELD"


def test_the_same_seed_loses_the_same_answers(client: TestClient) -> None:
    auth = login(client)

    def statuses() -> list[int]:
        client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 0.5, "seed": 42})
        return [
            client.post(f"{API}/sobjects/Account", json={"Name": f"Seeded {n}"}, headers=auth).status_code
            for n in range(20)
        ]

    first, second = statuses(), statuses()

    assert first == second
    assert {201, 503} == set(first)
    # Lost or not, every write committed.
    assert len(names(client, auth, "Seeded ")) == 40


def test_unknown_modes_are_refused_and_a_reset_clears_the_fault(client: TestClient) -> None:
    assert client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_mode": "maybe"}).status_code == 422
    assert client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 1.5}).status_code == 422
    client.patch(FAULTS, headers=ADMIN, json={"ambiguous_commit_ratio": 0.3})

    reset = client.post("/__emulator__/orgs/acme/reset", headers=ADMIN).json()

    assert reset["faults"]["ambiguous_commit_ratio"] == 0.0

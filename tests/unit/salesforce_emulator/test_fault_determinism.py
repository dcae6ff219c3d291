"""Injected faults replay exactly for a given seed, whatever other orgs are doing."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
ACCOUNTS = "/services/data/v62.0/sobjects/Account"


def login(client: TestClient, org: str) -> dict[str, str]:
    form = {
        "grant_type": "password",
        "client_id": f"duplex-{org}-client",
        "client_secret": f"duplex-{org}-secret",
        "username": f"admin@{org}.example",
        "password": f"{org}-dev-password",
    }
    response = client.post("/services/oauth2/token", data=form)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def outcome(response: httpx.Response) -> str:
    if response.status_code == 204:
        return "ok"
    return str(response.json()[0]["errorCode"])


def run(
    client: TestClient, acme: dict[str, str], globex: dict[str, str], records: list[str], globex_calls: int
) -> list[str]:
    """Update each record once; ``globex_calls`` calls to the other org between every two."""
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"seed": 1234})
    outcomes = []
    for i, record_id in enumerate(records):
        for _ in range(globex_calls):
            client.get("/services/data/v62.0/limits/", headers=globex)
        outcomes.append(outcome(client.patch(f"{ACCOUNTS}/{record_id}", json={"Phone": str(i)}, headers=acme)))
    return outcomes


def test_same_seed_gives_same_outages_and_locked_records_with_other_orgs_interleaved(client: TestClient) -> None:
    acme, globex = login(client, "acme"), login(client, "globex")
    records = [client.post(ACCOUNTS, json={"Name": f"A{i}"}, headers=acme).json()["id"] for i in range(20)]
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 0.3, "lock_ratio": 0.3})
    # The other org has faults too, so its calls consume its own fault decisions.
    client.patch("/__emulator__/orgs/globex/faults", headers=ADMIN, json={"unavailable_ratio": 0.5, "seed": 99})

    alone = run(client, acme, globex, records, globex_calls=0)
    interleaved = run(client, acme, globex, records, globex_calls=2)
    again = run(client, acme, globex, records, globex_calls=1)

    assert alone == interleaved == again
    # Otherwise the comparison proves nothing: the seed must give a mix of every outcome.
    assert {"ok", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW"} <= set(alone)


def test_a_different_seed_gives_a_different_pattern(client: TestClient) -> None:
    acme = login(client, "acme")
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 0.5, "seed": 1})
    first = [client.get("/services/data/v62.0/limits/", headers=acme).status_code for _ in range(20)]
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"seed": 2})
    second = [client.get("/services/data/v62.0/limits/", headers=acme).status_code for _ in range(20)]
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"seed": 1})
    replay = [client.get("/services/data/v62.0/limits/", headers=acme).status_code for _ in range(20)]

    assert first == replay
    assert first != second

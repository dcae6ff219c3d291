"""What every HTTP answer looks like on the wire: header names in Salesforce's spelling, and
Salesforce's error body where the web framework would have used its own."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator
from services.salesforce_emulator.wire import canonical_name
from tests.unit.salesforce_emulator.sessions import bearer, login

pytestmark = pytest.mark.unit

B = "/services/data/v62.0"


def names(response: httpx.Response) -> list[str]:
    """Header names exactly as the app sent them (httpx keeps the raw spelling)."""
    return [name.decode() for name, _ in response.headers.raw]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"content-type", b"Content-Type"),
        (b"sforce-limit-info", b"Sforce-Limit-Info"),
        (b"sforce-locator", b"Sforce-Locator"),
        (b"sforce-numberofrecords", b"Sforce-NumberOfRecords"),
        (b"location", b"Location"),
        (b"etag", b"ETag"),
        (b"Last-Modified", b"Last-Modified"),
        (b"www-authenticate", b"WWW-Authenticate"),
    ],
)
def test_canonical_names(raw: bytes, canonical: bytes) -> None:
    assert canonical_name(raw) == canonical


def test_rest_responses_carry_canonical_names_and_a_date(client: TestClient) -> None:
    auth = bearer(login(client))
    created = client.post(f"{B}/sobjects/Account", headers=auth, json={"Name": "Wire Ltd"})
    assert created.status_code == 201
    sent = names(created)
    assert {"Content-Type", "Content-Length", "Location", "Sforce-Limit-Info", "Date"} <= set(sent)
    assert all(name[0].isupper() for name in sent), sent


def test_bulk_query_results_carry_canonical_names(client: TestClient) -> None:
    auth = bearer(login(client))
    job = client.post(f"{B}/jobs/query", headers=auth, json={"operation": "query", "query": "SELECT Id FROM Account"})
    results = client.get(f"{B}/jobs/query/{job.json()['id']}/results", headers=auth)
    assert results.status_code == 200
    assert {"Content-Type", "Sforce-Locator", "Sforce-NumberOfRecords", "Sforce-Limit-Info"} <= set(names(results))


def test_oauth_and_soap_responses_carry_canonical_names(client: TestClient) -> None:
    token = client.post(
        "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "duplex-acme-client",
            "client_secret": "duplex-acme-secret",
            "username": "admin@acme.example",
            "password": "acme-dev-password",
        },
    )
    assert {"Content-Type", "Cache-Control", "Pragma"} <= set(names(token))
    soap = client.post("/services/Soap/u/62.0", content=b"<nope/>", headers={"SOAPAction": "bogus"})
    assert soap.status_code == 500
    assert "Content-Type" in names(soap)
    assert "content-type" not in names(soap)


@pytest.mark.parametrize(
    "path", ["/", "/nowhere", "/services/oauth2/nowhere", "/services/Soap/c/62.0", "/__emulator__/nowhere"]
)
def test_unknown_paths_answer_with_salesforces_error_body(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
    assert "Content-Type" in names(response)


def test_unknown_resources_of_a_version_answer_with_salesforces_error_body(client: TestClient) -> None:
    response = client.get(f"{B}/nowhere", headers=bearer(login(client)))
    assert response.status_code == 404
    assert response.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]


def test_a_method_a_resource_does_not_take_is_405_in_salesforces_words(client: TestClient) -> None:
    auth = bearer(login(client))
    response = client.put(f"{B}/limits/", headers=auth)
    assert response.status_code == 405
    assert response.json() == [
        {"message": "HTTP Method 'PUT' not allowed. Allowed are GET", "errorCode": "METHOD_NOT_ALLOWED"}
    ]
    assert response.headers["Allow"] == "GET"
    assert "Allow" in names(response)


def test_an_unexpected_failure_is_a_salesforce_500_with_canonical_names(emulator: Emulator) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    emulator.app.add_api_route("/services/data/explode", explode)
    with TestClient(emulator.app, raise_server_exceptions=False) as client:
        response = client.get("/services/data/explode")
    assert response.status_code == 500
    (body,) = response.json()
    assert body["errorCode"] == "UNKNOWN_EXCEPTION"
    assert body["message"].startswith(
        "An unexpected error occurred. Please include this ErrorId if you contact support"
    )
    assert "boom" not in response.text
    assert {"Content-Type", "Content-Length", "Date"} <= set(names(response))


def test_admin_api_validation_errors_use_the_same_shape(client: TestClient) -> None:
    response = client.patch(
        "/__emulator__/orgs/acme/faults", headers={"Authorization": "Bearer test-admin-token"}, json={"bogus": 1}
    )
    assert response.status_code == 422
    (body,) = response.json()
    assert body["errorCode"] == "INVALID_INPUT"
    assert "bogus" in body["message"]

"""API versions as Salesforce serves them: the list, each version's resources, retired and unknown
versions, and resources younger than the version asked for."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.common.tenant_config import known_api_versions
from services.salesforce_emulator.app import Emulator
from services.salesforce_emulator.settings import EmulatorSettings
from services.salesforce_emulator.versions import LATEST_VERSION, SUPPORTED_VERSIONS
from tests.unit.salesforce_emulator.sessions import bearer, login

pytestmark = pytest.mark.unit


def error_of(response: httpx.Response) -> tuple[int, str]:
    (body,) = response.json()
    return response.status_code, body["errorCode"]


@pytest.mark.parametrize("path", ["/services/data", "/services/data/"])
def test_the_versions_list_needs_no_session_and_runs_from_31_to_the_latest(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    versions = response.json()
    assert [v["version"] for v in versions] == [f"{n}.0" for n in range(31, int(float(LATEST_VERSION)) + 1)]
    assert versions[0] == {"label": "Summer '14", "url": "/services/data/v31.0", "version": "31.0"}
    assert {"label": "Winter '27", "url": "/services/data/v68.0", "version": "68.0"} in versions
    assert versions[-1]["version"] == LATEST_VERSION == known_api_versions().latest.version


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_versions_resources_name_the_caller(client: TestClient, emulator: Emulator, suffix: str) -> None:
    token = login(client)
    response = client.get(f"/services/data/v50.0{suffix}", headers=bearer(token))
    assert response.status_code == 200
    resources = response.json()
    org = emulator.default_org
    user = org.user_by_name("admin@acme.example")
    assert user is not None
    # A client resuming a session from stored tokens learns who it is from here.
    assert resources["identity"] == f"{emulator.instance_url}/id/{org.org_id}/{user.user_id}"
    assert resources["sobjects"] == "/services/data/v50.0/sobjects"
    assert {"query", "queryAll", "limits", "composite", "tooling"} <= set(resources)
    identity = client.get(resources["identity"], headers=bearer(token))
    assert identity.json()["user_id"] == user.user_id


def test_resources_need_a_session(client: TestClient) -> None:
    assert error_of(client.get("/services/data/v62.0")) == (401, "INVALID_SESSION_ID")


@pytest.mark.parametrize("version", ["31.0", "50.0", "62.0", "68.0"])
def test_every_served_version_answers(client: TestClient, version: str) -> None:
    token = login(client)
    response = client.get(
        f"/services/data/v{version}/query", params={"q": "SELECT Id FROM Account"}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    for record in response.json()["records"]:
        assert record["attributes"]["url"].startswith(f"/services/data/v{version}/sobjects/Account/")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("30.0", (410, "GONE")),
        ("21.0", (410, "GONE")),
        ("20.0", (410, "GONE")),
        (f"{int(float(LATEST_VERSION)) + 1}.0", (404, "NOT_FOUND")),
        ("62.5", (404, "NOT_FOUND")),
        ("latest", (404, "NOT_FOUND")),
    ],
)
def test_versions_salesforce_does_not_serve(client: TestClient, version: str, expected: tuple[int, str]) -> None:
    # Judged before the session: a retired version is gone for everyone.
    for path in ("", "/", "/sobjects/Account", "/query?q=SELECT+Id+FROM+Account", "/jobs/ingest"):
        assert error_of(client.get(f"/services/data/v{version}{path}")) == expected, path


def test_the_gone_message_says_what_to_use(client: TestClient) -> None:
    (body,) = client.get("/services/data/v30.0/sobjects").json()
    assert body["message"] == "API version 30.0 is retired and no longer available. Use API version 31.0 or later."


@pytest.mark.parametrize(
    ("method", "path", "first_version"),
    [
        ("GET", "/jobs/ingest", 41),
        ("GET", "/jobs/query", 47),
        ("POST", "/composite/sobjects", 42),
        ("PATCH", "/composite/sobjects/Account/Id", 46),
    ],
)
def test_resources_do_not_exist_before_their_first_version(
    client: TestClient, method: str, path: str, first_version: int
) -> None:
    auth = bearer(login(client))
    before = client.request(method, f"/services/data/v{first_version - 1}.0{path}", headers=auth, json={"records": []})
    assert error_of(before) == (404, "NOT_FOUND")
    since = client.request(method, f"/services/data/v{first_version}.0{path}", headers=auth, json={"records": []})
    assert since.status_code == 200, since.text


def test_the_start_up_line_names_the_latest_version(emulator: Emulator) -> None:
    assert emulator.startup_info()["api_version"] == LATEST_VERSION


@pytest.mark.parametrize("version", ["30.0", "99.0", "sixty"])
def test_the_default_version_must_be_one_the_emulator_serves(version: str) -> None:
    with pytest.raises(ValidationError, match="must be an API version the emulator serves"):
        EmulatorSettings(default_api_version=version)
    assert "31.0" in SUPPORTED_VERSIONS

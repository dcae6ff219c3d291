"""OAuth 2.0 end to end against the real entry point over HTTPS (verified with the emulator's CA)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devstack.ports import pick_free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ADMIN = {"Authorization": "Bearer oauth-flows-admin"}
CALLBACK = "http://127.0.0.1:8765/oauth/callback"
LIMITS = "/services/data/v62.0/limits/"
INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("emulator")
    https_port, grpc_port = pick_free_ports(2)
    stderr = data / "stderr.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.salesforce_emulator", "--https-port", str(https_port), "--grpc-port",
         str(grpc_port), "--data-file", str(data / "emulator.db"), "--tls-dir", str(data / "tls"),
         "--admin-token", ADMIN["Authorization"].split()[1]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")},
    )  # fmt: skip
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(60)
    if not line or not line[0]:
        process.kill()
        pytest.fail(f"emulator did not start: {stderr.read_text()}")
    info: dict[str, Any] = json.loads(line[0])
    yield info
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    # Sessions, passwords and secrets never reach the logs.
    logs = stderr.read_text()
    for secret in (info["password"], info["client_secret"], ADMIN["Authorization"].split()[1]):
        assert secret not in logs


@pytest.fixture
def http(emulator: dict[str, Any]) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=emulator["ca_cert"])
    with httpx.Client(base_url=emulator["instance_url"], verify=context, follow_redirects=False) as client:
        yield client


@pytest.fixture(autouse=True)
def clean_org(http: httpx.Client) -> Iterator[None]:
    yield
    assert http.post("/__emulator__/orgs/acme/reset", headers=ADMIN).status_code == 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pkce_login(http: httpx.Client, client_id: str, scope: str = "api refresh_token") -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(8)
    redirect = http.get(
        "/services/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "state": state,
            "scope": scope,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert redirect.status_code == 302
    location = urlsplit(redirect.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == state
    token = http.post(
        "/services/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body


def test_pkce_refresh_revoke_round_trip(http: httpx.Client, emulator: dict[str, Any]) -> None:
    body = pkce_login(http, emulator["client_id"])
    assert body["instance_url"] == emulator["instance_url"]
    assert body["id"].endswith(f"/id/{emulator['org_id']}/{emulator['user_id']}")
    first = http.get(LIMITS, headers=bearer(body["access_token"]))
    assert first.status_code == 200
    assert first.json()["DailyApiRequests"]["Max"] == 15000

    info = http.get("/services/oauth2/userinfo", headers=bearer(body["access_token"])).json()
    assert (info["organization_id"], info["preferred_username"]) == (emulator["org_id"], emulator["username"])

    refreshed = http.post(
        "/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": emulator["client_id"],
            "refresh_token": body["refresh_token"],
        },
    ).json()
    assert refreshed["access_token"] != body["access_token"]
    assert http.get(LIMITS, headers=bearer(refreshed["access_token"])).status_code == 200

    assert http.post("/services/oauth2/revoke", data={"token": body["refresh_token"]}).status_code == 200
    for token in (body["access_token"], refreshed["access_token"]):
        gone = http.get(LIMITS, headers=bearer(token))
        assert gone.status_code == 401
        assert gone.json() == INVALID_SESSION
    again = http.post(
        "/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": emulator["client_id"],
            "refresh_token": body["refresh_token"],
        },
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_pkce_mistakes_are_refused(http: httpx.Client, emulator: dict[str, Any]) -> None:
    plain = http.get(
        "/services/oauth2/authorize",
        params={"response_type": "code", "client_id": emulator["client_id"], "redirect_uri": CALLBACK,
                "code_challenge": "x" * 43, "code_challenge_method": "plain", "state": "s"},
    )  # fmt: skip
    assert plain.status_code == 302
    assert parse_qs(urlsplit(plain.headers["location"]).query)["error"] == ["invalid_request"]
    wrong_uri = http.get(
        "/services/oauth2/authorize",
        params={"response_type": "code", "client_id": emulator["client_id"], "redirect_uri": "http://evil.example/"},
    )
    assert wrong_uri.status_code == 400
    assert wrong_uri.json()["error"] == "redirect_uri_mismatch"


def authorization_code(http: httpx.Client, client_id: str, challenge: str) -> str:
    redirect = http.get(
        "/services/oauth2/authorize",
        params={"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "state": "s",
                "code_challenge": challenge, "code_challenge_method": "S256"},
    )  # fmt: skip
    assert redirect.status_code == 302
    return parse_qs(urlsplit(redirect.headers["location"]).query)["code"][0]


@pytest.mark.parametrize(
    ("verifier", "error", "description"),
    [
        # Well-formed, but not the one the challenge was made from.
        (secrets.token_urlsafe(48), "invalid_request", "invalid code_verifier"),
        # A challenge was sent to /authorize, so /token must prove it.
        (None, "invalid_grant", "invalid code verifier"),
        # RFC 7636: 43 to 128 characters of [A-Za-z0-9-._~]; these are neither.
        ("too-short", "invalid_request", "invalid code_verifier"),
        ("!" * 50, "invalid_request", "invalid code_verifier"),
    ],
)
def test_pkce_verifier_failures_at_token(
    http: httpx.Client, emulator: dict[str, Any], verifier: str | None, error: str, description: str
) -> None:
    real_verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(real_verifier.encode()).digest()).rstrip(b"=").decode()
    code = authorization_code(http, emulator["client_id"], challenge)
    form = {"grant_type": "authorization_code", "code": code, "client_id": emulator["client_id"],
            "redirect_uri": CALLBACK}  # fmt: skip
    if verifier is not None:
        form["code_verifier"] = verifier

    refused = http.post("/services/oauth2/token", data=form)

    assert refused.status_code == 400
    assert refused.json() == {"error": error, "error_description": description}


def test_client_credentials_and_password_grants(http: httpx.Client, emulator: dict[str, Any]) -> None:
    cc = http.post(
        "/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(emulator["client_id"], emulator["client_secret"]),
    )
    assert cc.status_code == 200, cc.text
    assert "refresh_token" not in cc.json()
    who = http.get("/services/oauth2/userinfo", headers=bearer(cc.json()["access_token"])).json()
    assert who["preferred_username"] == "integration@acme.example"  # the app's execution user

    password = http.post(
        "/services/oauth2/token",
        data={"grant_type": "password", "client_id": emulator["client_id"], "client_secret": emulator["client_secret"],
              "username": emulator["username"], "password": emulator["password"]},
    )  # fmt: skip
    assert password.status_code == 200
    assert http.get(LIMITS, headers=bearer(password.json()["access_token"])).status_code == 200
    bad = http.post(
        "/services/oauth2/token",
        data={"grant_type": "password", "client_id": emulator["client_id"], "client_secret": emulator["client_secret"],
              "username": emulator["username"], "password": "wrong"},
    )  # fmt: skip
    assert (bad.status_code, bad.json()) == (
        400,
        {"error": "invalid_grant", "error_description": "authentication failure"},
    )


def test_usage_header_on_every_api_response_and_the_lowered_limit(http: httpx.Client, emulator: dict[str, Any]) -> None:
    token = pkce_login(http, emulator["client_id"], scope="api")["access_token"]
    seen = []
    for path in (LIMITS, "/services/data/v62.0/sobjects/", "/services/data/v62.0/sobjects/Nope/describe"):
        response = http.get(path, headers=bearer(token))
        seen.append(response.headers.get("Sforce-Limit-Info"))
    assert seen == ["api-usage=1/15000", "api-usage=2/15000", "api-usage=3/15000"]
    assert http.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"api_limit": 5}).status_code == 200
    statuses = [http.get(LIMITS, headers=bearer(token)).status_code for _ in range(3)]
    assert statuses == [200, 200, 403]
    refused = http.get(LIMITS, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=5/5"


def test_expire_all_sessions_fault(http: httpx.Client, emulator: dict[str, Any]) -> None:
    body = pkce_login(http, emulator["client_id"])
    assert http.post("/__emulator__/orgs/acme/tokens/expire", headers=ADMIN).json()["expired"] >= 1
    assert http.get(LIMITS, headers=bearer(body["access_token"])).json() == INVALID_SESSION
    renewed = http.post(
        "/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": emulator["client_id"],
            "refresh_token": body["refresh_token"],
        },
    ).json()
    assert http.get(LIMITS, headers=bearer(renewed["access_token"])).status_code == 200

"""Duplex's Salesforce OAuth client without a network: URLs, PKCE, JWT assertions, responses and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.salesforce_oauth import (
    JWT_BEARER_GRANT,
    ConnectedApp,
    OAuthError,
    ReconnectNeeded,
    SalesforceOAuth,
    Token,
    callback_code,
    code_challenge,
    jwt_assertion,
    jwt_audience,
    parse_token,
)

pytestmark = pytest.mark.unit

LOGIN = "https://login.example.test"
CALLBACK = "https://duplex.example.test/connect/callback"
APP = ConnectedApp(
    client_id="3MVG9-client", client_secret="client-secret-value", redirect_uri=CALLBACK, login_url=LOGIN
)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOKEN_BODY = {
    "access_token": "00Dxx!access-token-value",
    "refresh_token": "5Aep-refresh-token-value",
    "signature": "c2lnbmF0dXJl",
    "scope": "api refresh_token",
    "instance_url": "https://acme.my.salesforce.example/",
    "id": f"{LOGIN}/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS",
    "token_type": "Bearer",
    "issued_at": "1772366400000",
}


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, app: ConnectedApp = APP) -> SalesforceOAuth:
    return SalesforceOAuth(app, httpx.AsyncClient(transport=httpx.MockTransport(handler)), clock=lambda: NOW)


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def test_s256_matches_rfc_7636_appendix_b() -> None:
    assert (
        code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_the_authorize_url_asks_for_a_code_with_pkce_s256() -> None:
    request = client(lambda r: httpx.Response(500)).authorize(login_hint="admin@acme.example")

    url = urlsplit(request.url)
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{LOGIN}/services/oauth2/authorize"
    assert params == {
        "response_type": "code",
        "client_id": "3MVG9-client",
        "redirect_uri": CALLBACK,
        "scope": "api refresh_token",
        "state": request.state,
        "code_challenge": code_challenge(request.code_verifier),
        "code_challenge_method": "S256",
        "login_hint": "admin@acme.example",
    }
    # 32 random bytes: 43 base64url characters, 256 bits (RFC 7636 wants 43 to 128 characters).
    assert len(request.state) >= 43
    assert 43 <= len(request.code_verifier) <= 128
    # The state travels through the browser in the URL; the verifier never leaves the server.
    assert request.code_verifier not in repr(request)


def test_every_authorization_gets_its_own_state_and_verifier() -> None:
    oauth = client(lambda r: httpx.Response(500))

    first, second = oauth.authorize(), oauth.authorize()

    assert first.state != second.state
    assert first.code_verifier != second.code_verifier


def test_the_web_server_flow_needs_a_redirect_uri() -> None:
    with pytest.raises(ValueError, match="redirect_uri"):
        client(lambda r: httpx.Response(500), ConnectedApp(client_id="c")).authorize()


def test_the_callback_gives_its_code_only_with_the_right_state() -> None:
    assert callback_code({"code": "aPrx.code", "state": "s" * 43}, "s" * 43) == "aPrx.code"
    with pytest.raises(OAuthError, match="invalid_state"):
        callback_code({"code": "aPrx.code", "state": "forged"}, "s" * 43)
    with pytest.raises(OAuthError, match="invalid_state"):
        callback_code({"code": "aPrx.code"}, "s" * 43)


def test_a_callback_error_is_raised_with_salesforce_words() -> None:
    params = {"error": "access_denied", "error_description": "end-user denied authorization", "state": "s"}

    with pytest.raises(OAuthError) as raised:
        callback_code(params, "s")

    assert (raised.value.error, raised.value.description) == ("access_denied", "end-user denied authorization")
    assert not isinstance(raised.value, ReconnectNeeded)


def test_the_jwt_assertion_verifies_with_the_public_key_and_has_the_claims(private_key: rsa.RSAPrivateKey) -> None:
    assertion = jwt_assertion("3MVG9-client", "integration@acme.example", LOGIN, pem(private_key), now=NOW)

    assert jwt.get_unverified_header(assertion)["alg"] == "RS256"
    claims = jwt.decode(
        assertion,
        private_key.public_key(),
        algorithms=["RS256"],
        audience=LOGIN,
        options={"verify_exp": False},
    )
    assert claims == {
        "iss": "3MVG9-client",
        "sub": "integration@acme.example",
        "aud": LOGIN,
        "exp": int((NOW + timedelta(minutes=3)).timestamp()),
    }


def test_a_jwt_assertion_does_not_verify_with_another_key(private_key: rsa.RSAPrivateKey) -> None:
    assertion = jwt_assertion("c", "u@example", LOGIN, private_key, now=NOW)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(assertion, other.public_key(), algorithms=["RS256"], audience=LOGIN, options={"verify_exp": False})


def test_a_jwt_assertion_lives_at_most_three_minutes(private_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="at most"):
        jwt_assertion("c", "u@example", LOGIN, private_key, now=NOW, lifetime=timedelta(minutes=5))


def test_a_token_response_is_parsed_with_salesforce_instance_url() -> None:
    token = parse_token(TOKEN_BODY)

    assert token.instance_url == "https://acme.my.salesforce.example"
    assert token.identity_url == TOKEN_BODY["id"]
    assert token.issued_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert token.scopes == ("api", "refresh_token")
    assert token.refresh_token == "5Aep-refresh-token-value"
    assert "access-token-value" not in repr(token)
    assert "refresh-token-value" not in repr(token)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"instance_url": None}, "has no instance_url"),
        ({"access_token": None}, "has no access_token"),
        ({"instance_url": "http://acme.example"}, "non-HTTPS"),
        ({"id": "http://login.example/id/a/b"}, "non-HTTPS"),
    ],
)
def test_a_malformed_token_response_is_refused(change: dict[str, Any], problem: str) -> None:
    body = {k: v for k, v in {**TOKEN_BODY, **change}.items() if v is not None}

    with pytest.raises(OAuthError, match=problem):
        parse_token(body)


async def test_the_code_exchange_sends_the_verifier_and_the_client_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=TOKEN_BODY)

    token = await client(handler).exchange_code("aPrx.code", "v" * 64)

    assert str(seen[0].url) == f"{LOGIN}/services/oauth2/token"
    assert form(seen[0]) == {
        "grant_type": "authorization_code",
        "code": "aPrx.code",
        "redirect_uri": CALLBACK,
        "code_verifier": "v" * 64,
        "client_id": "3MVG9-client",
        "client_secret": "client-secret-value",
    }
    assert isinstance(token, Token)
    assert token.access_token == TOKEN_BODY["access_token"]


async def test_refresh_without_rotation_returns_no_refresh_token() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(form(request))
        return httpx.Response(200, json={k: v for k, v in TOKEN_BODY.items() if k != "refresh_token"})

    token = await client(handler).refresh("5Aep-refresh-token-value")

    assert seen[0]["grant_type"] == "refresh_token"
    assert seen[0]["refresh_token"] == "5Aep-refresh-token-value"
    assert token.refresh_token is None


async def test_invalid_grant_means_reconnect() -> None:
    body = {"error": "invalid_grant", "error_description": "expired access/refresh token"}
    oauth = client(lambda r: httpx.Response(400, json=body))

    with pytest.raises(ReconnectNeeded) as raised:
        await oauth.refresh("revoked")

    assert (raised.value.error, raised.value.description, raised.value.status) == (
        "invalid_grant",
        "expired access/refresh token",
        400,
    )


async def test_other_oauth_errors_carry_salesforce_error_and_description() -> None:
    body = {"error": "invalid_client_id", "error_description": "client identifier invalid"}
    oauth = client(lambda r: httpx.Response(400, json=body))

    with pytest.raises(OAuthError) as raised:
        await oauth.exchange_code("code", "v" * 64)

    assert not isinstance(raised.value, ReconnectNeeded)
    assert (raised.value.error, raised.value.description) == ("invalid_client_id", "client identifier invalid")
    assert str(raised.value) == "invalid_client_id: client identifier invalid"


async def test_jwt_bearer_posts_a_signed_assertion(private_key: rsa.RSAPrivateKey) -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(form(request))
        return httpx.Response(200, json={k: v for k, v in TOKEN_BODY.items() if k != "refresh_token"})

    token = await client(handler).jwt_bearer("integration@acme.example", private_key)

    assert set(seen[0]) == {"grant_type", "assertion"}
    assert seen[0]["grant_type"] == JWT_BEARER_GRANT
    claims = jwt.decode(
        seen[0]["assertion"],
        private_key.public_key(),
        algorithms=["RS256"],
        audience=LOGIN,
        options={"verify_exp": False},
    )
    assert (claims["iss"], claims["sub"]) == ("3MVG9-client", "integration@acme.example")
    assert token.refresh_token is None


@pytest.mark.parametrize(
    ("login_url", "audience"),
    [
        ("https://login.salesforce.com", "https://login.salesforce.com"),
        ("https://test.salesforce.com/", "https://test.salesforce.com"),
        # A My Domain is posted to, but the assertion names the login host of its kind.
        ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
        ("https://ACME.My.Salesforce.com", "https://login.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
        # Anything else (a site, a listed proxy, the emulator) is its own audience.
        ("https://partners.acme.example", "https://partners.acme.example"),
        ("https://127.0.0.1:8443/", "https://127.0.0.1:8443"),
    ],
)
def test_the_jwt_audience_is_the_authorization_server_salesforce_documents(login_url: str, audience: str) -> None:
    assert jwt_audience(login_url) == audience


async def test_a_jwt_bearer_sign_in_at_a_sandbox_my_domain_names_test_salesforce_com(
    private_key: rsa.RSAPrivateKey,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={k: v for k, v in TOKEN_BODY.items() if k != "refresh_token"})

    app = ConnectedApp(client_id="3MVG9-client", login_url="https://acme--uat.sandbox.my.salesforce.com")
    await client(handler, app).jwt_bearer("integration@acme.example", pem(private_key))

    assert str(seen[0].url) == "https://acme--uat.sandbox.my.salesforce.com/services/oauth2/token"
    claims = jwt.decode(
        form(seen[0])["assertion"],
        private_key.public_key(),
        algorithms=["RS256"],
        audience="https://test.salesforce.com",
        # Signed at the test's fixed clock.
        options={"verify_exp": False},
    )
    assert claims["exp"] == int((NOW + timedelta(minutes=3)).timestamp())


async def test_password_and_client_credentials_send_the_client_credentials() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(form(request))
        return httpx.Response(200, json={k: v for k, v in TOKEN_BODY.items() if k != "refresh_token"})

    oauth = client(handler)
    await oauth.password("integration@acme.example", "password+token")
    await oauth.client_credentials()

    assert seen == [
        {
            "grant_type": "password",
            "username": "integration@acme.example",
            "password": "password+token",
            "client_id": "3MVG9-client",
            "client_secret": "client-secret-value",
        },
        {"grant_type": "client_credentials", "client_id": "3MVG9-client", "client_secret": "client-secret-value"},
    ]


@pytest.mark.parametrize(
    ("identity_url", "ids"),
    [
        (f"{LOGIN}/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS", ("00Dxx0000001gPLEAY", "005xx000001SwiUAAS")),
        (f"{LOGIN}/id/00Dxx0000001gPL/005xx000001SwiU/", ("00Dxx0000001gPL", "005xx000001SwiU")),
        (f"{LOGIN}/services/oauth2/userinfo", None),
        (f"{LOGIN}/id/00Dxx0000001gPLEAY", None),
    ],
)
def test_the_org_and_user_ids_come_from_the_identity_url(identity_url: str, ids: tuple[str, str] | None) -> None:
    assert parse_token(TOKEN_BODY | {"id": identity_url}).ids == ids


async def test_identity_reads_org_user_and_username_with_the_access_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": TOKEN_BODY["id"],
                "organization_id": "00Dxx0000001gPLEAY",
                "user_id": "005xx000001SwiUAAS",
                "username": "admin@acme.example",
                "display_name": "Ada Admin",
                "email": "admin@acme.example",
            },
        )

    identity = await client(handler).identity(parse_token(TOKEN_BODY))

    assert str(seen[0].url) == TOKEN_BODY["id"]
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN_BODY['access_token']}"
    assert (identity.org_id, identity.user_id, identity.username) == (
        "00Dxx0000001gPLEAY",
        "005xx000001SwiUAAS",
        "admin@acme.example",
    )


async def test_a_refused_identity_call_is_an_oauth_error() -> None:
    oauth = client(lambda r: httpx.Response(403, text="Bad_OAuth_Token"))

    with pytest.raises(OAuthError) as raised:
        await oauth.identity(parse_token(TOKEN_BODY))

    assert (raised.value.error, raised.value.description, raised.value.status) == ("http_403", "Bad_OAuth_Token", 403)


async def test_revoke_posts_the_token_and_reports_refusal() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(form(request))
        if len(seen) == 1:
            return httpx.Response(200)
        return httpx.Response(400, content=json.dumps({"error": "invalid_token", "error_description": "invalid token"}))

    oauth = client(handler)
    await oauth.revoke("5Aep-refresh-token-value")
    with pytest.raises(OAuthError, match="invalid_token"):
        await oauth.revoke("5Aep-refresh-token-value")

    assert seen == [{"token": "5Aep-refresh-token-value"}] * 2

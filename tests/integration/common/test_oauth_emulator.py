"""Duplex's Salesforce OAuth client against the emulator process, the test playing the browser.

The emulator's ``/authorize`` approves at once (as the org's default user) and redirects to the
callback with the code, so following that one redirect by hand is the whole of the user's part.
The JWT bearer flow needs no browser: the test uploads a certificate to a connected app instead.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.emulator import API_VERSION, EmulatorProcess
from services.common.db import migrate
from services.common.salesforce_oauth import (
    AuthorizationRequest,
    ConnectedApp,
    OAuthError,
    ReconnectNeeded,
    SalesforceOAuth,
    Token,
    callback_code,
)
from services.common.vault import Keyring, Purpose, SharedSession, Vault
from tests.fixtures.keys import private_key_pem, self_signed

pytestmark = pytest.mark.integration

# Registered for the emulator's seeded connected apps.
CALLBACK = "http://127.0.0.1:8765/oauth/callback"
LIMITS = f"/services/data/v{API_VERSION}/limits/"


@pytest.fixture
async def http(emulator: EmulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    async with httpx.AsyncClient(verify=context, timeout=30, trust_env=False) as client:
        yield client


def connected_app(emulator: EmulatorProcess, **overrides: str) -> ConnectedApp:
    fields = {
        "client_id": emulator.info["client_id"],
        "client_secret": emulator.info["client_secret"],
        "redirect_uri": CALLBACK,
        "login_url": emulator.info["login_url"],
        **overrides,
    }
    return ConnectedApp(**fields)


async def approve(http: httpx.AsyncClient, request: AuthorizationRequest) -> str:
    """The browser's part: open the authorize URL, land on the callback, hand back the code."""
    redirect = await http.get(request.url, follow_redirects=False)
    assert redirect.status_code == 302, redirect.text
    location = urlsplit(redirect.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return callback_code({k: v[0] for k, v in parse_qs(location.query).items()}, request.state)


async def status(http: httpx.AsyncClient, instance_url: str, access_token: str) -> int:
    """The HTTP status of one REST call made with ``access_token``."""
    response = await http.get(instance_url + LIMITS, headers={"Authorization": f"Bearer {access_token}"})
    return response.status_code


async def limits_status(http: httpx.AsyncClient, token: Token) -> int:
    return await status(http, token.instance_url, token.access_token)


async def test_web_server_flow_exchange_identity_refresh_revoke(
    emulator: EmulatorProcess, http: httpx.AsyncClient
) -> None:
    oauth = SalesforceOAuth(connected_app(emulator), http)
    request = oauth.authorize()

    token = await oauth.exchange_code(await approve(http, request), request.code_verifier)

    assert token.instance_url == emulator.instance_url
    assert token.refresh_token is not None
    assert set(token.scopes) == {"api", "refresh_token"}
    assert await limits_status(http, token) == 200

    identity = await oauth.identity(token)
    assert (identity.org_id, identity.user_id, identity.username) == (
        emulator.info["org_id"],
        emulator.info["user_id"],
        emulator.info["username"],
    )

    refreshed = await oauth.refresh(token.refresh_token)
    assert refreshed.access_token != token.access_token
    # The seeded app does not rotate refresh tokens: keep the one we have.
    assert refreshed.refresh_token is None
    assert await limits_status(http, refreshed) == 200

    await oauth.revoke(token.refresh_token)
    with pytest.raises(ReconnectNeeded) as raised:
        await oauth.refresh(token.refresh_token)
    assert raised.value.error == "invalid_grant"
    # Revoking the refresh token ended the access tokens it issued.
    assert await limits_status(http, refreshed) == 401


async def test_a_spent_code_needs_a_new_authorization(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    oauth = SalesforceOAuth(connected_app(emulator), http)
    request = oauth.authorize()
    code = await approve(http, request)
    await oauth.exchange_code(code, request.code_verifier)

    with pytest.raises(ReconnectNeeded):
        await oauth.exchange_code(code, request.code_verifier)


async def test_a_wrong_verifier_is_an_oauth_error_not_a_reconnect(
    emulator: EmulatorProcess, http: httpx.AsyncClient
) -> None:
    oauth = SalesforceOAuth(connected_app(emulator), http)
    request = oauth.authorize()
    code = await approve(http, request)

    with pytest.raises(OAuthError) as raised:
        await oauth.exchange_code(code, oauth.authorize().code_verifier)

    assert not isinstance(raised.value, ReconnectNeeded)
    assert (raised.value.error, raised.value.description) == ("invalid_request", "invalid code_verifier")


async def test_a_wrong_client_secret_is_an_oauth_error(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    oauth = SalesforceOAuth(connected_app(emulator, client_secret="not-the-secret"), http)
    request = oauth.authorize()

    with pytest.raises(OAuthError) as raised:
        await oauth.exchange_code(await approve(http, request), request.code_verifier)

    assert (raised.value.error, raised.value.description) == ("invalid_client", "invalid client credentials")


async def test_a_connected_tenant_shares_one_rotating_session_through_the_vault(
    emulator: EmulatorProcess, http: httpx.AsyncClient, fresh_database: str
) -> None:
    # An app that rotates refresh tokens: a refresh that used a spent one would be invalid_grant.
    client_id = f"rotating-{uuid.uuid4().hex[:8]}"
    emulator.admin(
        "POST",
        f"/orgs/{emulator.info['org_id']}/clients",
        {
            "name": client_id,
            "client_id": client_id,
            "client_secret": f"{client_id}-secret",
            "redirect_uris": [CALLBACK],
            "require_secret": True,
            "refresh_token_rotation": True,
        },
    )
    oauth = SalesforceOAuth(connected_app(emulator, client_id=client_id, client_secret=f"{client_id}-secret"), http)
    await migrate(fresh_database)
    keyring = Keyring({"k1": b"k" * 32}, "k1")

    async def refresh(refresh_token: str | None) -> Token:
        assert refresh_token is not None
        return await oauth.refresh(refresh_token)

    async with asyncpg.create_pool(fresh_database, min_size=1, max_size=2) as pool:
        vault = Vault(pool, keyring)
        request = oauth.authorize()
        connected = await oauth.exchange_code(await approve(http, request), request.code_verifier)
        assert connected.refresh_token is not None
        await vault.put("acme", Purpose.REFRESH_TOKEN, connected.refresh_token)
        session = SharedSession(vault, "acme", refresh)

        first = await session.current()
        # The org refuses the session (revoked here, so other tests' sessions are untouched).
        await oauth.revoke(first.access_token)
        assert await status(http, first.instance_url, first.access_token) == 401
        second = await session.refreshed(first)
        third = await session.refreshed(second)

        assert len({first.access_token, second.access_token, third.access_token}) == 3
        assert await status(http, third.instance_url, third.access_token) == 200
        # Three refreshes, each with the refresh token the one before it returned.
        stored = await vault.get("acme", Purpose.REFRESH_TOKEN)
        assert stored not in (None, connected.refresh_token)
        assert stored is not None
        assert (await oauth.refresh(stored)).refresh_token is not None


async def test_jwt_bearer_with_a_registered_certificate(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    org_id = emulator.info["org_id"]
    client_id = f"jwt-{uuid.uuid4().hex[:8]}"
    emulator.admin(
        "POST", f"/orgs/{org_id}/clients", {"name": client_id, "client_id": client_id, "client_secret": "unused"}
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    registered = emulator.admin(
        "PUT", f"/orgs/{org_id}/clients/{client_id}/certificate", {"certificate": self_signed(key)}
    )
    assert registered.json()["jwt_bearer"] is True
    # No secret and no redirect URI: the flow needs only the client id and the private key.
    oauth = SalesforceOAuth(ConnectedApp(client_id=client_id, login_url=emulator.info["login_url"]), http)
    pem = private_key_pem(key)

    token = await oauth.jwt_bearer(emulator.info["username"], pem)

    assert token.refresh_token is None
    assert token.instance_url == emulator.instance_url
    assert await limits_status(http, token) == 200
    identity = await oauth.identity(token)
    assert (identity.org_id, identity.user_id, identity.username) == (
        org_id,
        emulator.info["user_id"],
        emulator.info["username"],
    )

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ReconnectNeeded) as raised:
        await oauth.jwt_bearer(emulator.info["username"], other_key)
    assert (raised.value.error, raised.value.description) == ("invalid_grant", "invalid assertion")

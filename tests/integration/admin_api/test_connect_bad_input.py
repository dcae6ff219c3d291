"""A callback that is not the honest end of an authorization (forged, expired or replayed state, a
refusal, a wrong code) gets a clear 4xx and stores nothing; what cannot be connected is refused up
front."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devstack.emulator import EmulatorProcess
from services.common.salesforce import env_secrets
from tests.integration.admin_api.connecting import (
    PUBLIC_URL,
    Connecting,
    Org,
    approve,
    salesforce_section,
    tenant_document,
)
from tests.integration.admin_api.harness import Api, bearer, problem, serving, tenant_yaml

pytestmark = pytest.mark.integration


async def refused(connecting: Connecting, status: int, params: dict[str, str], **headers: str) -> dict[str, Any]:
    """A callback that must be refused with ``status``, leaving every table a change touches as it was."""
    before = await connecting.api.snapshot()
    body = problem(await connecting.callback(params, **headers), status)
    assert await connecting.api.snapshot() == before
    return body


def state_of(authorize_url: str) -> str:
    (state,) = parse_qs(urlsplit(authorize_url).query)["state"]
    return state


async def connected(connecting: Connecting, org: Org) -> None:
    """acme connected once, so that a failed callback has something to spoil."""
    await connecting.add_tenant("acme", org)
    await connecting.connect("acme")


async def test_a_missing_or_forged_state_is_refused(connecting: Connecting, orgs: tuple[Org, Org]) -> None:
    await connected(connecting, orgs[0])
    honest = await approve(connecting.http, await connecting.authorize("acme"))

    missing = await refused(connecting, 400, {"code": honest["code"]})
    forged = await refused(connecting, 400, {"code": honest["code"], "state": secrets.token_urlsafe(32)})

    assert missing["type"] == forged["type"] == "urn:duplex:problem:invalid-state"
    assert missing["detail"] == "the callback carries no state; start the connection again from the admin API"
    assert forged["detail"].startswith("this authorization is unknown or was already used")
    # The honest one still works afterwards.
    assert (await connecting.callback(honest)).status_code == 200


async def test_a_replayed_state_is_refused(connecting: Connecting, orgs: tuple[Org, Org]) -> None:
    await connecting.add_tenant("acme", orgs[0])
    callback = await approve(connecting.http, await connecting.authorize("acme"))
    assert (await connecting.callback(callback)).status_code == 200

    body = await refused(connecting, 400, callback)

    assert body["detail"].startswith("this authorization is unknown or was already used")
    assert (await connecting.connection("acme"))["status"] == "connected"


async def test_an_expired_state_is_refused(connecting: Connecting, orgs: tuple[Org, Org]) -> None:
    await connected(connecting, orgs[0])
    callback = await approve(connecting.http, await connecting.authorize("acme"))
    await connecting.api.db.execute("UPDATE oauth_authorizations SET expires_at = now() - interval '1 second'")

    body = await refused(connecting, 400, callback)

    assert body["type"] == "urn:duplex:problem:invalid-state"
    assert body["detail"] == "this authorization expired; start the connection again from the admin API"
    assert await connecting.api.db.fetchval("SELECT count(*) FROM oauth_authorizations") == 0


async def test_a_wrong_code_is_refused_and_spends_the_state(connecting: Connecting, orgs: tuple[Org, Org]) -> None:
    await connected(connecting, orgs[0])
    callback = await approve(connecting.http, await connecting.authorize("acme"))

    wrong = await refused(connecting, 400, {**callback, "code": secrets.token_urlsafe(48)})

    assert wrong["type"] == "urn:duplex:problem:authorization-failed"
    assert wrong["detail"] == (
        "Salesforce refused the authorization code (invalid_grant: invalid authorization code);"
        " start the connection again"
    )
    # Single use: the right code with that state is refused now too.
    spent = await refused(connecting, 400, callback)
    assert spent["type"] == "urn:duplex:problem:invalid-state"


async def test_a_denied_authorization_is_a_page_for_a_browser_and_a_problem_otherwise(
    connecting: Connecting, orgs: tuple[Org, Org]
) -> None:
    await connected(connecting, orgs[0])
    denied = {"error": "access_denied", "error_description": "end-user denied authorization"}

    body = await refused(connecting, 400, {"state": state_of(await connecting.authorize("acme")), **denied})
    before = await connecting.api.snapshot()
    page = await connecting.callback(
        {"state": state_of(await connecting.authorize("acme")), **denied}, accept="text/html"
    )

    assert body["type"] == "urn:duplex:problem:authorization-failed"
    assert (
        body["detail"] == "Salesforce did not authorize the connection (access_denied: end-user denied authorization)"
    )
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<h1>Salesforce was not connected</h1>" in page.text
    assert "access_denied: end-user denied authorization" in page.text
    assert await connecting.api.snapshot() == before


async def test_what_cannot_be_connected_is_refused_up_front(
    connecting: Connecting, orgs: tuple[Org, Org], emulator: EmulatorProcess
) -> None:
    org = orgs[0]
    password = salesforce_section(emulator, org)
    password["auth"] = {
        "mode": "password",
        "clientId": org.client_id,
        "clientSecret": {"secretRef": {"env": org.secret_env}},
        "username": org.username,
        "password": {"secretRef": {"env": "DUPLEX_SECRET_SF_PASSWORD"}},
    }
    unknown_secret = salesforce_section(emulator, org)
    unknown_secret["auth"]["clientSecret"] = {"secretRef": {"env": "DUPLEX_SECRET_NOT_SET_ANYWHERE"}}
    no_refresh = salesforce_section(emulator, org)
    no_refresh["auth"]["scopes"] = ["api"]
    for name, section in (("pw", password), ("nosecret", unknown_secret), ("norefresh", no_refresh)):
        document = tenant_document(name, section)
        applied = await connecting.api.http.put(
            f"/api/v1/tenants/{name}", json=document, headers=bearer(connecting.admin)
        )
        assert applied.status_code == 201, applied.text
    before = await connecting.api.snapshot()

    async def authorize(name: str) -> Any:
        return await connecting.api.http.post(
            f"/api/v1/tenants/{name}/connection:authorize", headers=bearer(connecting.admin)
        )

    mode = problem(await authorize("pw"), 409)
    secret = problem(await authorize("nosecret"), 503)
    scopes = problem(await authorize("norefresh"), 409)
    missing = problem(await authorize("nobody"), 404)

    assert mode["type"] == "urn:duplex:problem:cannot-connect"
    assert mode["detail"].startswith("tenant pw authenticates with auth mode password;")
    assert secret["detail"] == (
        "the connected app's client secret: secret not available:"
        " environment variable DUPLEX_SECRET_NOT_SET_ANYWHERE is not set"
    )
    assert scopes["detail"].startswith("tenant norefresh's spec.salesforce.auth.scopes lack refresh_token")
    assert missing["detail"] == "no tenant 'nobody'"
    assert await connecting.api.snapshot() == before
    assert await connecting.api.db.fetchval("SELECT count(*) FROM oauth_authorizations") == 0


async def test_without_the_vault_connecting_is_unavailable_and_the_rest_works(
    migrated: str, emulator: EmulatorProcess, orgs: tuple[Org, Org]
) -> None:
    secrets_ = env_secrets({orgs[0].secret_env: orgs[0].client_secret})
    async with serving(migrated, secrets=secrets_, public_url=PUBLIC_URL, vault=None) as api:
        admin = await api.token()
        document = tenant_document("acme", salesforce_section(emulator, orgs[0]))
        assert (await api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(admin))).status_code == 201

        unavailable = problem(
            await api.http.post("/api/v1/tenants/acme/connection:authorize", headers=bearer(admin)), 503
        )
        shown = await api.http.get("/api/v1/tenants/acme/connection", headers=bearer(admin))
        deleted = await api.http.delete("/api/v1/tenants/acme", headers=bearer(admin))

    assert unavailable["detail"] == "connecting tenants needs the vault: set VAULT_KEYS for the admin API"
    assert (shown.status_code, shown.json()["status"]) == (200, "not_connected")
    assert deleted.status_code == 204


async def test_the_callback_url_follows_where_the_api_is_served(migrated: str) -> None:
    async with serving(migrated) as api:
        default = await _redirect_uri(api)
    async with serving(migrated, public_url="https://duplex.example.com/admin/") as api:
        public = await _redirect_uri(api)

    assert default.startswith("http://127.0.0.1:")
    assert default.endswith("/api/v1/oauth/callback")
    assert int(default.removeprefix("http://127.0.0.1:").split("/")[0]) > 0
    assert public == "https://duplex.example.com/admin/api/v1/oauth/callback"


async def _redirect_uri(api: Api) -> str:
    admin = await api.token()
    assert (await api.apply(admin, tenant_yaml())).status_code in (200, 201)
    started = await api.http.post("/api/v1/tenants/acme/connection:authorize", headers=bearer(admin))
    assert started.status_code == 200, started.text
    uri: str = started.json()["redirectUri"]
    assert parse_qs(urlsplit(started.json()["authorizeUrl"]).query)["redirect_uri"] == [uri]
    return uri

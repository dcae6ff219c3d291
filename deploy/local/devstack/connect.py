"""Connecting the demo tenant to the emulated org the way an admin connects a real one.

An admin registers Duplex as a connected app in Salesforce (Setup → App Manager) with the admin
API's callback URL, then clicks "Connect Salesforce": the admin API returns the authorize URL, the
browser signs in and allows access, and Salesforce sends it back to the callback with a code that
the admin API exchanges for tokens it keeps in the vault. Here the emulator's admin API registers
the app, and this module plays the browser: the emulator approves at once as the org's first user
(admin@acme.example) and redirects to the callback, which this module follows.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

CALLBACK_PATH = "/api/v1/oauth/callback"
SCOPES = ("api", "refresh_token")
# The demo app's consumer secret: local development only, like the emulator's seed credentials.
DEMO_APP_SECRET = "duplex-demo-secret"


class ConnectError(RuntimeError):
    """A step of the connect flow failed; the message says which and what the server answered."""


@dataclass(frozen=True)
class ConnectedApp:
    client_id: str
    client_secret: str


def _checked(response: httpx.Response, what: str, *, expect: int = 200) -> httpx.Response:
    if response.status_code != expect:
        raise ConnectError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    return response


async def register_connected_app(info: dict[str, Any], admin_url: str) -> ConnectedApp:
    """Duplex's connected app in the emulated org, with this admin API's callback URL.

    One app per callback URL (the admin API's port is kept across runs, so normally one app), so
    an app registered by an earlier run with another URL never makes the authorize step fail.
    """
    port = httpx.URL(admin_url).port
    app = ConnectedApp(f"duplex-demo-{port}", DEMO_APP_SECRET)
    spec = {
        "name": "Duplex (demo)",
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "redirect_uris": [admin_url + CALLBACK_PATH],
        "pkce_required": True,
        "require_secret": True,
        "scopes": list(SCOPES),
    }
    async with _emulator(info) as http:
        response = await http.post(
            f"/__emulator__/orgs/{info['org_id']}/clients",
            json=spec,
            headers={"Authorization": f"Bearer {info['admin_token']}"},
        )
    # "is taken": registered by an earlier run, with the same callback URL.
    if response.status_code != 201 and "is taken" not in response.text:
        raise ConnectError(f"registering the connected app: HTTP {response.status_code} {response.text[:300]}")
    return app


async def connection(admin_url: str, token: str, tenant: str) -> dict[str, Any]:
    """The tenant's connection as the admin API reports it."""
    async with _admin(admin_url, token) as api:
        response = _checked(await api.get(f"/api/v1/tenants/{tenant}/connection"), "reading the connection")
    status: dict[str, Any] = response.json()
    return status


async def connect(admin_url: str, token: str, tenant: str, info: dict[str, Any]) -> dict[str, Any]:
    """Authorize, approve as the browser would, complete the callback; the resulting connection."""
    async with _admin(admin_url, token) as api:
        authorization = _checked(
            await api.post(f"/api/v1/tenants/{tenant}/connection:authorize"), "asking for the authorize URL"
        ).json()
    async with _emulator(info) as browser:
        approved = _checked(
            await browser.get(authorization["authorizeUrl"], follow_redirects=False), "signing in", expect=302
        )
        callback = approved.headers["location"]
        if not callback.startswith(admin_url + CALLBACK_PATH):
            raise ConnectError(f"Salesforce sent the browser to {callback}, not to the admin API's callback")
        # The browser's request to the callback: no API token, only the state and the code.
        _checked(await browser.get(callback), "completing the callback")
    return await connection(admin_url, token, tenant)


def _admin(admin_url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=30, trust_env=False
    )


def _emulator(info: dict[str, Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=info["instance_url"],
        verify=ssl.create_default_context(cafile=info["ca_cert"]),
        timeout=30,
        trust_env=False,
    )

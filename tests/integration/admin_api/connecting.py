"""The connect flow's test set-up: the emulator process as Salesforce, an org of its own per tenant
(with Duplex's connected app registered for the API's callback), and the test as the browser.

The emulator's ``/authorize`` approves at once (as the org's first user) and redirects to the
callback with the code: following that one redirect by hand is the whole of the user's part.
"""

from __future__ import annotations

import copy
import ssl
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.emulator import EmulatorProcess
from services.common.tenant_config import SalesforceSpec
from tests.fixtures.keys import self_signed
from tests.integration.admin_api.harness import SAMPLE, Api, bearer

TIER = {"name": "Tier__c", "type": "picklist", "picklist_values": ["Gold", "Silver", "Bronze"]}
DUPLEX_ID = {"name": "Duplex_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
# What the sample tenant maps that a new org lacks (Account.Duplex_Id__c it has).
SAMPLE_FIELDS: dict[str, list[dict[str, Any]]] = {
    "Account": [
        {"name": "Partner_Status__c", "type": "picklist", "picklist_values": ["Active", "Onboarding", "Suspended"]},
        TIER,
        {"name": "Industries__c", "type": "multipicklist", "picklist_values": ["Software", "Services", "Hardware"]},
        {"name": "Partner_Since__c", "type": "date"},
        {"name": "Archived__c", "type": "boolean", "default_value": False},
    ],
    "Contact": [DUPLEX_ID, {"name": "Portal_User__c", "type": "boolean", "default_value": False}],
}

# Where users' browsers reach the admin API (its DUPLEX_ADMIN_PUBLIC_URL); the test is the browser,
# so nothing listens there: the callback's query is handed to the in-process API instead.
PUBLIC_URL = "https://duplex-admin.test"
CALLBACK = PUBLIC_URL + "/api/v1/oauth/callback"
API_VERSION = "62.0"


@dataclass(frozen=True)
class Org:
    """An emulator org with Duplex's connected app."""

    org_id: str
    user_id: str
    username: str
    client_id: str
    client_secret: str

    @property
    def secret_env(self) -> str:
        """The variable the tenant's clientSecret secretRef names."""
        return f"DUPLEX_SECRET_SF_{self.client_id.upper().replace('-', '_')}"


def new_org(emulator: EmulatorProcess) -> Org:
    alias = f"conn{uuid.uuid4().hex[:10]}"
    client_id, secret = f"{alias}-client", f"{alias}-secret"
    username = f"admin@{alias}.example"
    created = emulator.admin(
        "POST",
        "/orgs",
        {
            "alias": alias,
            "users": [{"username": username, "password": f"{alias}-password"}],
            "clients": [
                {
                    "name": "duplex",
                    "client_id": client_id,
                    "client_secret": secret,
                    "redirect_uris": [CALLBACK],
                    "pkce_required": True,
                    "require_secret": True,
                    "scopes": ["api", "refresh_token"],
                }
            ],
            # What Duplex upserts Accounts by, so that the writer can write to the org.
            "objects": {
                "Account": {
                    "fields": [
                        {"name": "Duplex_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
                    ]
                }
            },
        },
    ).json()
    (user,) = created["users"]
    return Org(created["org_id"], user["user_id"], username, client_id, secret)


def certify(emulator: EmulatorProcess, org: Org, key: rsa.RSAPrivateKey | None) -> None:
    """Upload a self-signed certificate of ``key`` to the org's connected app (the JWT bearer flow's
    "Use digital signatures"); None removes it, and with it the flow."""
    certificate = None if key is None else self_signed(key)
    answer = emulator.admin(
        "PUT", f"/orgs/{org.org_id}/clients/{org.client_id}/certificate", {"certificate": certificate}
    )
    assert answer.json()["jwt_bearer"] is (key is not None), answer.text


def jwt_salesforce_section(emulator: EmulatorProcess, org: Org, key_env: str) -> dict[str, Any]:
    """The org signed in to server-side with its connected app's certificate key (from ``key_env``)."""
    section = salesforce_section(emulator, org)
    section["auth"] = {
        "mode": "jwt_bearer",
        "clientId": org.client_id,
        "username": org.username,
        "privateKey": {"secretRef": {"env": key_env}},
    }
    return section


def salesforce_section(emulator: EmulatorProcess, org: Org) -> dict[str, Any]:
    return {
        "instanceUrl": emulator.instance_url,
        "loginUrl": emulator.info["login_url"],
        "apiVersion": API_VERSION,
        "auth": {
            "mode": "oauth_pkce",
            "clientId": org.client_id,
            "clientSecret": {"secretRef": {"env": org.secret_env}},
            "scopes": ["api", "refresh_token"],
        },
        "dailyApiCap": 5000,
        "callOptionsClient": "duplex-test",
    }


def tenant_document(name: str, salesforce: dict[str, Any]) -> dict[str, Any]:
    """The sample tenant under ``name``, connected to another org."""
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE))
    document["metadata"]["name"] = name
    document["spec"]["salesforce"] = salesforce
    return document


def spec_of(document: dict[str, Any]) -> SalesforceSpec:
    return SalesforceSpec.model_validate(document["spec"]["salesforce"])


def browser(emulator: EmulatorProcess) -> httpx.AsyncClient:
    """An HTTP client trusting the emulator's CA (this machine's proxy settings ignored)."""
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=emulator.ca_cert), timeout=30, trust_env=False)


async def approve(http: httpx.AsyncClient, authorize_url: str) -> dict[str, str]:
    """The user's part: open the authorize URL, be sent back to the callback; its query."""
    redirect = await http.get(authorize_url, follow_redirects=False)
    assert redirect.status_code == 302, redirect.text
    location = urlsplit(redirect.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return {name: values[0] for name, values in parse_qs(location.query).items()}


@dataclass
class Connecting:
    """The API (in-process), the emulator, and an admin token: what connect tests start from."""

    api: Api
    emulator: EmulatorProcess
    http: httpx.AsyncClient
    admin: str

    async def add_tenant(self, name: str, org: Org) -> dict[str, Any]:
        document = tenant_document(name, salesforce_section(self.emulator, org))
        applied = await self.api.http.put(f"/api/v1/tenants/{name}", json=document, headers=bearer(self.admin))
        assert applied.status_code == 201, applied.text
        return document

    async def authorize(self, name: str) -> str:
        started = await self.api.http.post(f"/api/v1/tenants/{name}/connection:authorize", headers=bearer(self.admin))
        assert started.status_code == 200, started.text
        url: str = started.json()["authorizeUrl"]
        return url

    async def callback(self, params: dict[str, str], **headers: str) -> httpx.Response:
        return await self.api.http.get("/api/v1/oauth/callback", params=params, headers=headers)

    async def connect(self, name: str) -> dict[str, Any]:
        """Authorize, approve as the browser, come back: the callback's answer."""
        answer = await self.callback(await approve(self.http, await self.authorize(name)))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def connection(self, name: str) -> dict[str, Any]:
        shown = await self.api.http.get(f"/api/v1/tenants/{name}/connection", headers=bearer(self.admin))
        assert shown.status_code == 200, shown.text
        body: dict[str, Any] = shown.json()
        return body

"""The connect flow end to end: the admin API in-process on a fresh database, the emulator process as
Salesforce, the test as the browser; then the services' side: a SalesforceClient built as cdc-ingest
and the writer build it, taking its session from the vault."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from devstack.paths import POSTGRES_BIN_DIR
from services.common.connections import ConnectionUnavailableError, Sessions
from services.common.metrics import Metrics
from services.common.salesforce import SalesforceClient, SecretResolver, UnlimitedBudget, env_secrets
from services.common.salesforce_oauth import ConnectedApp, ReconnectNeeded, SalesforceOAuth
from services.common.tenant_config.policy import SalesforcePolicy
from services.common.vault import Keyring, Purpose, SessionToken, Vault
from tests.integration.admin_api.connecting import CALLBACK, Connecting, Org, approve, browser, spec_of
from tests.integration.admin_api.harness import VAULT_KEYS, bearer

pytestmark = pytest.mark.integration

LIMITS = "/services/data/v62.0/limits"
NEEDS_RECONNECT = "duplex_connection_needs_reconnect"


@dataclass
class Services:
    """What a service process holds: its own pool and HTTP client, the vault, its sessions, its metrics."""

    pool: asyncpg.Pool
    vault: Vault
    secrets: SecretResolver
    sessions: Sessions
    metrics: Metrics

    def client(self, tenant: str, document: dict[str, Any]) -> SalesforceClient:
        """The tenant's client as cdc-ingest and the writer build it."""
        return SalesforceClient(
            tenant,
            spec_of(document),
            secrets=self.secrets,
            budget=UnlimitedBudget(),
            http=self.sessions.http,
            metrics=self.metrics,
            sessions=self.sessions,
        )

    async def token(self, tenant: str, purpose: Purpose) -> str | None:
        return await self.vault.get(tenant, purpose)

    async def access_token(self, tenant: str) -> str:
        stored = await self.token(tenant, Purpose.ACCESS_TOKEN)
        assert stored is not None
        return SessionToken.from_json(stored).access_token

    def needs_reconnect(self, tenant: str) -> float | None:
        return self.metrics.registry.get_sample_value(NEEDS_RECONNECT, {"tenant": tenant})


@pytest.fixture
async def services(connecting: Connecting, orgs: tuple[Org, Org]) -> AsyncIterator[Services]:
    secrets = env_secrets({org.secret_env: org.client_secret for org in orgs})
    async with (
        asyncpg.create_pool(connecting.api.dsn, min_size=1, max_size=4) as pool,
        browser(connecting.emulator) as http,
    ):
        vault = Vault(pool, Keyring.parse(VAULT_KEYS))
        metrics = Metrics(CollectorRegistry())
        sessions = Sessions(
            pool,
            vault=vault,
            service="writer",
            http=http,
            secrets=secrets,
            # The emulator listens on 127.0.0.1, which only a development deployment may call.
            policy=SalesforcePolicy(development=True),
            metrics=metrics,
        )
        yield Services(pool, vault, secrets, sessions, metrics)


async def last_refresh(connecting: Connecting, tenant: str) -> str:
    shown = await connecting.connection(tenant)
    value: str = shown["lastRefreshAt"]
    return value


async def revoke_at_salesforce(connecting: Connecting, token: str) -> None:
    """What an org admin does in Setup (Connected Apps OAuth Usage → Revoke)."""
    answer = await connecting.http.post(
        connecting.emulator.info["login_url"] + "/services/oauth2/revoke", data={"token": token}
    )
    assert answer.status_code == 200, answer.text


async def test_connecting_stores_the_grant_in_the_vault_only(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    org = orgs[0]
    await connecting.add_tenant("acme", org)
    assert (await connecting.connection("acme"))["status"] == "not_connected"

    url = await connecting.authorize("acme")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        connecting.emulator.info["login_url"] + "/services/oauth2/authorize"
    )
    assert (query["client_id"], query["redirect_uri"]) == ([org.client_id], [CALLBACK])
    assert query["scope"] == ["api refresh_token"]
    assert query["code_challenge_method"] == ["S256"]
    assert "code_verifier" not in query
    # Server-side, the state is only a digest, bound to the tenant and the admin who started.
    (state,) = query["state"]
    pending = await connecting.api.db.fetch("SELECT * FROM oauth_authorizations")
    digest = hashlib.sha256(state.encode()).hexdigest()
    assert [(p["state_sha256"], p["tenant_id"]) for p in pending] == [(digest, "acme")]
    token_id = await connecting.api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'connector'")
    actor = f"connector (token {token_id})"
    assert pending[0]["principal"] == actor

    answer = await connecting.callback(await approve(connecting.http, url))

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    connected = answer.json()
    assert connected == await connecting.connection("acme")
    assert (connected["authMode"], connected["status"]) == ("oauth_pkce", "connected")
    assert (connected["orgId"], connected["userId"], connected["username"]) == (org.org_id, org.user_id, org.username)
    assert connected["instanceUrl"] == connecting.emulator.instance_url
    assert connected["scopes"] == ["api", "refresh_token"]
    assert connected["connectedBy"] == actor
    assert connected["connectedAt"] is not None
    assert connected["lastRefreshAt"] is not None
    assert connected["lastError"] is None
    assert await connecting.api.db.fetchval("SELECT count(*) FROM oauth_authorizations") == 0

    refresh_token = await services.token("acme", Purpose.REFRESH_TOKEN)
    access_token = await services.access_token("acme")
    assert refresh_token is not None
    limits = await connecting.http.get(
        connecting.emulator.instance_url + LIMITS, headers={"Authorization": f"Bearer {access_token}"}
    )
    assert limits.status_code == 200

    audit = await connecting.api.db.fetch(
        "SELECT actor, action, detail FROM audit_log WHERE action LIKE 'connection.%'"
    )
    assert [(a["actor"], a["action"]) for a in audit] == [(actor, "connection.connected")]
    assert json.loads(audit[0]["detail"]) == {
        "orgId": org.org_id,
        "userId": org.user_id,
        "username": org.username,
        "instanceUrl": connecting.emulator.instance_url,
        "scopes": ["api", "refresh_token"],
        "reconnect": False,
    }

    dump = await asyncio.to_thread(
        subprocess.run,
        [str(POSTGRES_BIN_DIR / "pg_dump"), "--data-only", "--dbname", connecting.api.dsn],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "COPY public.vault_secrets" in dump.stdout
    rows = dump.stdout.splitlines()
    assert sum(r.startswith("acme\trefresh_token\t") for r in rows) == 1
    assert sum(r.startswith("acme\taccess_token\t") for r in rows) == 1
    leaked = [t for t in (refresh_token, access_token) if t in dump.stdout or t.encode().hex() in dump.stdout]
    assert leaked == []


async def test_services_call_with_the_stored_token_and_refresh_it_through_the_vault(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    org = orgs[0]
    acme = await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    connected_token = await services.access_token("acme")
    connected_refresh = await last_refresh(connecting, "acme")
    client = services.client("acme", acme)

    assert (await client.request("GET", LIMITS)).status_code == 200
    # The stored token did it: nothing was refreshed.
    assert await services.access_token("acme") == connected_token
    assert await last_refresh(connecting, "acme") == connected_refresh

    connecting.emulator.admin("POST", f"/orgs/{org.org_id}/tokens/expire")
    assert (await client.request("GET", LIMITS)).status_code == 200

    refreshed_token = await services.access_token("acme")
    assert refreshed_token != connected_token
    assert await last_refresh(connecting, "acme") > connected_refresh
    # Another replica starts from the vault's token and has nothing to refresh.
    replica = services.client("acme", acme)
    assert (await replica.request("GET", LIMITS)).status_code == 200
    assert await services.access_token("acme") == refreshed_token
    assert (await connecting.connection("acme"))["status"] == "connected"
    assert services.needs_reconnect("acme") == 0


async def test_a_refused_refresh_token_needs_a_reconnect_of_that_tenant_alone(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    acme = await connecting.add_tenant("acme", orgs[0])
    globex = await connecting.add_tenant("globex", orgs[1])
    await connecting.connect("acme")
    await connecting.connect("globex")
    acme_client, globex_client = services.client("acme", acme), services.client("globex", globex)
    assert (await acme_client.request("GET", LIMITS)).status_code == 200
    refresh_token = await services.token("acme", Purpose.REFRESH_TOKEN)
    assert refresh_token is not None

    # An org admin revokes Duplex's grant: its access tokens die with it.
    await revoke_at_salesforce(connecting, refresh_token)
    with pytest.raises(ConnectionUnavailableError) as lost:
        await acme_client.request("GET", LIMITS)

    assert lost.value.reason == "needs_reconnect"
    assert "connection:authorize" in str(lost.value)
    shown = await connecting.connection("acme")
    assert shown["status"] == "needs_reconnect"
    assert shown["lastError"].startswith("invalid_grant")
    log = await connecting.api.db.fetch("SELECT tenant_id, service, event, code FROM sync_log")
    assert [tuple(r) for r in log] == [("acme", "writer", "connection.needs_reconnect", "invalid_grant")]
    assert services.needs_reconnect("acme") == 1
    # The other tenant, on the same process's vault sessions, goes on.
    assert (await globex_client.request("GET", LIMITS)).status_code == 200
    assert (await connecting.connection("globex"))["status"] == "connected"
    assert services.needs_reconnect("globex") == 0
    # Until someone reconnects, asking again changes nothing (and Salesforce is not asked).
    with pytest.raises(ConnectionUnavailableError):
        await acme_client.request("GET", LIMITS)
    assert await connecting.api.db.fetchval("SELECT count(*) FROM sync_log") == 1
    assert await services.token("acme", Purpose.REFRESH_TOKEN) == refresh_token

    page = await connecting.callback(
        await approve(connecting.http, await connecting.authorize("acme")), accept="text/html,application/xhtml+xml"
    )

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == "default-src 'none'"
    assert f"Tenant acme is connected to org {orgs[0].org_id}" in page.text
    # The same client, in the same process: no restart.
    assert (await acme_client.request("GET", LIMITS)).status_code == 200
    assert (await connecting.connection("acme"))["status"] == "connected"
    assert services.needs_reconnect("acme") == 0
    reconnects = await connecting.api.db.fetch(
        "SELECT detail FROM audit_log WHERE tenant_id = 'acme' AND action = 'connection.connected' ORDER BY id"
    )
    assert [json.loads(r["detail"])["reconnect"] for r in reconnects] == [False, True]


async def test_revoking_forgets_the_tokens_and_revokes_them_at_salesforce(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    org = orgs[0]
    acme = await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    client = services.client("acme", acme)
    assert (await client.request("GET", LIMITS)).status_code == 200
    refresh_token = await services.token("acme", Purpose.REFRESH_TOKEN)
    assert refresh_token is not None

    revoked = await connecting.api.http.post(
        "/api/v1/tenants/acme/connection:revoke", headers=bearer(connecting.admin) | {"x-request-id": "revoke-1"}
    )

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["orgId"] == org.org_id
    assert await services.token("acme", Purpose.REFRESH_TOKEN) is None
    assert await services.token("acme", Purpose.ACCESS_TOKEN) is None
    oauth = SalesforceOAuth(
        ConnectedApp(org.client_id, client_secret=org.client_secret, login_url=connecting.emulator.info["login_url"]),
        connecting.http,
    )
    with pytest.raises(ReconnectNeeded):
        await oauth.refresh(refresh_token)
    with pytest.raises(ConnectionUnavailableError) as refused:
        await client.request("GET", LIMITS)
    assert refused.value.reason == "revoked"
    audit = await connecting.api.db.fetch(
        "SELECT action, detail, request_id FROM audit_log WHERE action = 'connection.revoked'"
    )
    assert [(a["action"], json.loads(a["detail"]), a["request_id"]) for a in audit] == [
        ("connection.revoked", {"salesforce": "revoked"}, "revoke-1")
    ]

    # Again: nothing left to revoke, nothing changes.
    before = await connecting.api.snapshot()
    again = await connecting.api.http.post("/api/v1/tenants/acme/connection:revoke", headers=bearer(connecting.admin))
    assert (again.status_code, again.json()["status"]) == (200, "revoked")
    assert await connecting.api.snapshot() == before


async def test_deleting_a_tenant_revokes_its_grant_and_drops_its_vault_data(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    org = orgs[0]
    await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    await connecting.authorize("acme")  # one more, never completed
    refresh_token = await services.token("acme", Purpose.REFRESH_TOKEN)
    assert refresh_token is not None

    deleted = await connecting.api.http.delete("/api/v1/tenants/acme", headers=bearer(connecting.admin))

    assert deleted.status_code == 204, deleted.text
    db = connecting.api.db
    assert await db.fetchval("SELECT count(*) FROM vault_data_keys WHERE tenant_id = 'acme'") == 0
    assert await db.fetchval("SELECT count(*) FROM vault_secrets WHERE tenant_id = 'acme'") == 0
    assert await db.fetchval("SELECT count(*) FROM oauth_authorizations") == 0
    assert await db.fetchval("SELECT status FROM salesforce_connections WHERE tenant_id = 'acme'") == "revoked"
    oauth = SalesforceOAuth(
        ConnectedApp(org.client_id, client_secret=org.client_secret, login_url=connecting.emulator.info["login_url"]),
        connecting.http,
    )
    with pytest.raises(ReconnectNeeded):
        await oauth.refresh(refresh_token)
    actions = await db.fetch("SELECT action, detail FROM audit_log WHERE tenant_id = 'acme' ORDER BY id")
    assert [(a["action"], json.loads(a["detail"])) for a in actions][-2:] == [
        ("tenant.deleted", {"version": 1}),
        ("connection.revoked", {"reason": "tenant deleted", "salesforce": "revoked"}),
    ]


async def test_a_tenant_deleted_while_salesforce_is_unreachable_is_still_deleted_and_says_so(
    connecting: Connecting, orgs: tuple[Org, Org], services: Services
) -> None:
    await connecting.add_tenant("acme", orgs[0])
    await connecting.connect("acme")
    # The tenant's login host stops answering (a closed port on this machine).
    await connecting.api.db.execute(
        "UPDATE config_history SET document = jsonb_set(document, '{spec,salesforce,loginUrl}', '\"https://127.0.0.1:9\"')"
    )

    deleted = await connecting.api.http.delete("/api/v1/tenants/acme", headers=bearer(connecting.admin))

    assert deleted.status_code == 204, deleted.text
    db = connecting.api.db
    assert await db.fetchval("SELECT count(*) FROM vault_data_keys WHERE tenant_id = 'acme'") == 0
    row = await db.fetchrow("SELECT status, last_error FROM salesforce_connections WHERE tenant_id = 'acme'")
    assert row["status"] == "revoked"
    assert row["last_error"].startswith("revoking at Salesforce failed: Salesforce could not be reached")
    detail = json.loads(await db.fetchval("SELECT detail FROM audit_log WHERE action = 'connection.revoked'"))
    assert detail["salesforce"].startswith("failed: Salesforce could not be reached")

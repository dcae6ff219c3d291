"""Tenants connected through the admin API keep syncing across restarts, a revoke and a reconnect.

Every part is its own process: the emulator as Salesforce, the admin API, the five services and one
partners app per tenant. Tenant ``web`` is connected the way an admin connects a real org (the
OAuth 2.0 web-server flow with PKCE: authorize URL from the admin API, the browser's approval and
redirect, the callback); tenant ``jwt`` signs in server to server with the connected app's
certificate (JWT bearer). Then:

1. both sync both ways;
2. every service is restarted and every access token expired at Salesforce, so each tenant can
   only go on syncing through what is stored: ``web``'s refresh token in the vault, ``jwt``'s key;
3. ``web`` is revoked: its app change is held, not written, not lost, while ``jwt`` keeps syncing;
   ``web`` is connected again and the held change arrives, with no service restarted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from devstack.connect import CALLBACK_PATH, connect
from devstack.emulator import EmulatorProcess, org_spec
from devstack.kafka import KafkaServer
from devstack.pipeline import SERVICES, Pipeline, PipelineConfig
from devstack.postgres import PostgresServer, dsn_with_database
from devstack.state import new_vault_keys
from services.admin.auth import Role
from services.admin.token_store import TokenStore
from services.common.db import migrate
from services.common.topics import TopicNames
from tests.e2e.pipeline.world import AppSide, SalesforceSide, tenant_document
from tests.fixtures.keys import new_key, private_key_pem, self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SYNC_WITHIN = 90.0
DUPLEX = [s for s in SERVICES if s.name != "partners-app"]


@dataclass
class Tenant:
    name: str
    org_id: str
    username: str
    crm: SalesforceSide
    app: AppSide
    apps: Pipeline


@dataclass
class World:
    emulator: EmulatorProcess
    services: Pipeline
    dsn: str
    token: str
    web: Tenant
    jwt: Tenant

    @property
    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.services.admin_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            trust_env=False,
        )

    async def connection(self, tenant: Tenant) -> dict[str, Any]:
        async with self.api as api:
            response = await api.get(f"/api/v1/tenants/{tenant.name}/connection")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def connect(self, tenant: Tenant) -> dict[str, Any]:
        return await connect(self.services.admin_url, self.token, tenant.name, self.emulator.info)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = SYNC_WITHIN) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(0.3)


async def syncs_both_ways(tenant: Tenant, label: str) -> None:
    """A partner made in the app reaches Salesforce, and an Account made in Salesforce reaches the app."""
    name = f"{tenant.name} {label} {uuid.uuid4().hex[:6]}"
    await tenant.app.create({"name": f"{name} app", "phone": "+33 1 0000"})
    [crm_id] = await tenant.crm.create([{"Name": f"{name} crm", "Website": "https://crm.example"}])

    async def in_salesforce() -> bool:
        return any(a["Name"] == f"{name} app" for a in (await tenant.crm.accounts()).values())

    async def in_app() -> bool:
        return any(r["salesforce_id"] == crm_id for r in (await tenant.app.rows()).values())

    await eventually(in_salesforce, f"{tenant.name}: the app's partner {label!r} in Salesforce")
    await eventually(in_app, f"{tenant.name}: Salesforce's Account {label!r} in the app")


async def _database(postgres: PostgresServer, name: str) -> str:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_with_database(postgres.dsn, name)


@asynccontextmanager
async def world(
    emulator: EmulatorProcess,
    kafka: KafkaServer,
    postgres: PostgresServer,
    names: TopicNames,
    dsn: str,
    state: Path,
) -> AsyncIterator[World]:
    run = uuid.uuid4().hex[:6]
    web_name, jwt_name = f"web-{run}", f"jwt-{run}"
    orgs = {}
    for alias in (web_name, jwt_name):
        response = emulator.admin("POST", "/orgs", org_spec(alias))
        assert response.status_code == 201, response.text
        orgs[alias] = response.json()["org_id"]
    key = new_key()
    registered = emulator.admin(
        "PUT", f"/orgs/{orgs[jwt_name]}/clients/{jwt_name}-client/certificate", {"certificate": self_signed(key)}
    )
    assert registered.status_code == 200, registered.text
    web_secret, jwt_key = f"DUPLEX_SECRET_{run.upper()}_WEB", f"DUPLEX_SECRET_{run.upper()}_JWT_KEY"
    config = PipelineConfig(
        state_dir=state,
        bootstrap_servers=kafka.bootstrap_servers,
        dsn=dsn,
        pubsub_target=emulator.grpc_target,
        ca_file=emulator.ca_cert,
        topic_prefix=names.prefix,
        vault_keys=new_vault_keys(),
        secrets={
            web_secret: f"{web_name}-connect-secret",
            jwt_key: private_key_pem(key),
        },
    )
    services = Pipeline(config, specs=DUPLEX)
    # Duplex's connected app in the web org, registered with the admin API's callback URL.
    added = emulator.admin(
        "POST",
        f"/orgs/{orgs[web_name]}/clients",
        {
            "name": "duplex-connect",
            "client_id": f"{web_name}-connect",
            "client_secret": f"{web_name}-connect-secret",
            "redirect_uris": [services.admin_url + CALLBACK_PATH],
            "pkce_required": True,
            "require_secret": True,
            "scopes": ["api", "refresh_token"],
        },
    )
    assert added.status_code == 201, added.text
    auth = {
        web_name: {
            "mode": "oauth_pkce",
            "clientId": f"{web_name}-connect",
            "clientSecret": {"secretRef": {"env": web_secret}},
        },
        jwt_name: {
            "mode": "jwt_bearer",
            "clientId": f"{jwt_name}-client",
            "username": f"admin@{jwt_name}.example",
            "privateKey": {"secretRef": {"env": jwt_key}},
        },
    }
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        _, token = await TokenStore(conn).create(
            name="e2e", role=Role.ADMIN, tenants=None, lifetime=None, actor="test set-up"
        )
    finally:
        await conn.close()
    async with AsyncExitStack() as stack:
        stack.callback(services.stop)
        await services.start(["admin"])
        async with httpx.AsyncClient(
            base_url=services.admin_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False, timeout=30
        ) as api:
            for name in (web_name, jwt_name):
                document = tenant_document(name, emulator, f"{name}-client", 10_000)
                document["spec"]["salesforce"]["loginUrl"] = emulator.info["login_url"]
                document["spec"]["salesforce"]["auth"] = auth[name]
                applied = await api.put(f"/api/v1/tenants/{name}", json=document)
                assert applied.status_code in (200, 201), applied.text
        tenants = {}
        for name in (web_name, jwt_name):
            app_dsn = await _database(postgres, f"app_{name.replace('-', '_')}")
            apps = Pipeline(
                dataclasses.replace(
                    config,
                    state_dir=state / name,
                    app_tenant=name,
                    app_dsn=app_dsn,
                    overrides={"partners-app": {"PARTNERS_APP_GROUP_ID": f"partners-app-{name}"}},
                ),
                specs=[s for s in SERVICES if s.name == "partners-app"],
            )
            stack.callback(apps.stop)
            crm = await stack.enter_async_context(SalesforceSide(emulator, name))
            app = AppSide(app_dsn)
            await app.migrate()
            tenants[name] = Tenant(name, orgs[name], f"admin@{name}.example", crm, app, apps)
        yield World(emulator, services, dsn, token, tenants[web_name], tenants[jwt_name])


async def test_connected_tenants_sync_across_restarts_a_revoke_and_a_reconnect(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    async with world(emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path) as w:
        # The web-server flow, as the admin's browser goes through it.
        connected = await w.connect(w.web)
        assert (connected["status"], connected["orgId"], connected["username"]) == (
            "connected",
            w.web.org_id,
            w.web.username,
        )
        await w.services.start()
        for tenant in (w.web, w.jwt):
            await tenant.apps.start()
        for tenant in (w.web, w.jwt):
            await syncs_both_ways(tenant, "first")
        # The JWT tenant's status comes from the services' own sign-ins.
        jwt_status = await w.connection(w.jwt)
        assert (jwt_status["status"], jwt_status["orgId"]) == ("connected", w.jwt.org_id)

        # Every service restarted, every access token Salesforce issued expired: only the stored
        # refresh token (web) and the connected app's key (jwt) can get the tenants going again.
        for service in w.services.services:
            await w.services.restart(service)
        for tenant in (w.web, w.jwt):
            expired = emulator.admin("POST", f"/orgs/{tenant.org_id}/tokens/expire")
            assert expired.status_code == 200, expired.text
        for tenant in (w.web, w.jwt):
            await syncs_both_ways(tenant, "after restart")
        refreshed = await w.connection(w.web)
        assert refreshed["lastRefreshAt"] is not None
        assert refreshed["lastRefreshAt"] > connected["lastRefreshAt"]

        # Revoked: the web tenant's change waits (nothing reaches Salesforce, nothing is lost)
        # while the jwt tenant keeps syncing; connected again, the change arrives.
        async with w.api as api:
            revoked = await api.post(f"/api/v1/tenants/{w.web.name}/connection:revoke")
        assert revoked.status_code == 200, revoked.text
        assert (await w.connection(w.web))["status"] == "revoked"
        held = f"{w.web.name} held {uuid.uuid4().hex[:6]}"
        await w.web.app.create({"name": held, "phone": "+33 1 0001"})
        await syncs_both_ways(w.jwt, "while web is revoked")
        assert not any(a["Name"] == held for a in (await w.web.crm.accounts()).values())

        reconnected = await w.connect(w.web)
        assert reconnected["status"] == "connected"

        async def held_arrived() -> bool:
            return any(a["Name"] == held for a in (await w.web.crm.accounts()).values())

        await eventually(held_arrived, "the change held while revoked, after the reconnect")
        await syncs_both_ways(w.web, "after reconnect")

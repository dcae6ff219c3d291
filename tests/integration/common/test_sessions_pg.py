"""Services' sessions for tenants that sign in server-side, against a real PostgreSQL (the vault, the
connection status, the sync log); Salesforce is an httpx mock transport that counts sign-ins.

Each :class:`Process` is what one service replica holds: its own Sessions over the shared database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.common.connections import ConnectionUnavailableError, Sessions, read_connection, record_revoked
from services.common.db import migrate
from services.common.metrics import Metrics
from services.common.salesforce import SalesforceClient, SecretResolver, UnlimitedBudget, env_secrets
from services.common.tenant_config import SalesforceSpec
from services.common.tenant_config.policy import SalesforcePolicy
from services.common.vault import Keyring, Purpose, SessionToken, Vault
from tests.fixtures.keys import new_key, private_key_pem

pytestmark = pytest.mark.integration

MY_DOMAIN = "https://acme.my.salesforce.com"
LIMITS = "/services/data/v62.0/limits"
ORG_ID, USER_ID = "00D000000000001AAA", "005000000000001AAA"
KEY_ENV = "DUPLEX_SECRET_SF_KEY"
KEYRING = Keyring({"k1": b"k" * 32}, "k1")


@pytest.fixture(scope="module")
def key_pem() -> str:
    return private_key_pem(new_key())


def jwt_spec(username: str = "integration@acme.example", **salesforce: Any) -> SalesforceSpec:
    return SalesforceSpec.model_validate(
        {
            "instanceUrl": MY_DOMAIN,
            "apiVersion": "62.0",
            "auth": {
                "mode": "jwt_bearer",
                "clientId": "3MVG9-duplex",
                "username": username,
                "privateKey": {"secretRef": {"env": KEY_ENV}},
            },
            "dailyApiCap": 1000,
            **salesforce,
        }
    )


@dataclass
class Salesforce:
    """Issues t1, t2, ... at the token endpoint (or ``refusal``); accepts only tokens in ``valid``."""

    refusal: dict[str, str] | None = None
    valid: set[str] = field(default_factory=set)
    sign_ins: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            self.sign_ins.append(str(request.url))
            if self.refusal is not None:
                return httpx.Response(400, json=self.refusal)
            token = f"t{next(self._numbers)}"
            self.valid.add(token)
            identity = f"https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"
            return httpx.Response(200, json={"access_token": token, "instance_url": MY_DOMAIN, "id": identity})
        token = request.headers["Authorization"].removeprefix("Bearer ")
        self.used.append(token)
        if token not in self.valid:
            return httpx.Response(401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "Session expired"}])
        return httpx.Response(200, json={})


@dataclass
class Process:
    """One service replica: its HTTP client, its metrics and its Sessions."""

    sessions: Sessions
    secrets: SecretResolver
    metrics: Metrics

    def client(self, tenant: str, spec: SalesforceSpec) -> SalesforceClient:
        return SalesforceClient(
            tenant,
            spec,
            secrets=self.secrets,
            budget=UnlimitedBudget(),
            http=self.sessions.http,
            sessions=self.sessions,
        )

    def gauge(self, tenant: str) -> float | None:
        return self.metrics.registry.get_sample_value("duplex_connection_error", {"tenant": tenant})


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_database)
    async with asyncpg.create_pool(fresh_database, min_size=1, max_size=8) as created:
        for tenant in ("acme", "globex"):
            await created.execute("INSERT INTO tenants (id, created_by) VALUES ($1, 'test')", tenant)
            await apply_version(created, tenant, 1)
        yield created


async def apply_version(pool: asyncpg.Pool, tenant: str, version: int) -> None:
    """What applying a configuration leaves for services to see (the document itself is not read here)."""
    await pool.execute(
        "INSERT INTO config_history (tenant_id, version, document, sha256, applied_by)"
        " VALUES ($1, $2, '{}'::jsonb, $3, 'test')",
        tenant,
        version,
        f"{version:064x}",
    )


@pytest.fixture
async def salesforce() -> Salesforce:
    return Salesforce()


@pytest.fixture
async def http(salesforce: Salesforce) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(salesforce)) as client:
        yield client


def process(
    pool: asyncpg.Pool,
    http: httpx.AsyncClient,
    key_pem: str,
    *,
    vault: bool = True,
    policy: SalesforcePolicy | None = None,
) -> Process:
    metrics = Metrics(CollectorRegistry())
    rules = policy or SalesforcePolicy()
    secrets = env_secrets({KEY_ENV: key_pem}, policy=rules)
    sessions = Sessions(
        pool,
        vault=Vault(pool, KEYRING) if vault else None,
        service="writer",
        http=http,
        secrets=secrets,
        policy=rules,
        metrics=metrics,
    )
    return Process(sessions, secrets, metrics)


async def sync_log(pool: asyncpg.Pool) -> list[tuple[str, str, str, str]]:
    rows = await pool.fetch("SELECT tenant_id, service, event, code FROM sync_log ORDER BY id")
    return [tuple(r) for r in rows]


async def test_replicas_on_one_vault_sign_a_jwt_tenant_in_once_and_record_the_connection(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    replicas = [process(pool, http, key_pem), process(pool, http, key_pem)]
    clients = [p.client("acme", jwt_spec()) for p in replicas]

    await asyncio.gather(*(c.request("GET", LIMITS) for c in clients))

    assert salesforce.sign_ins == [f"{MY_DOMAIN}/services/oauth2/token"]
    assert salesforce.used == ["t1", "t1"]
    stored = await Vault(pool, KEYRING).get("acme", Purpose.ACCESS_TOKEN)
    assert stored is not None
    assert SessionToken.from_json(stored).access_token == "t1"
    async with pool.acquire() as conn:
        connection = await read_connection(conn, "acme")
    assert (connection.status, connection.org_id, connection.user_id) == ("connected", ORG_ID, USER_ID)
    assert (connection.username, connection.instance_url) == ("integration@acme.example", MY_DOMAIN)
    assert connection.connected_by == "writer"
    assert connection.last_refresh_at is not None
    first_refresh = connection.last_refresh_at

    # Salesforce ends the session: one new sign-in, under the lock, serves both replicas.
    salesforce.valid.clear()
    await asyncio.gather(*(c.request("GET", LIMITS) for c in clients))

    assert len(salesforce.sign_ins) == 2
    assert salesforce.used[-2:] == ["t2", "t2"]
    async with pool.acquire() as conn:
        again = await read_connection(conn, "acme")
    assert again.last_refresh_at is not None
    assert again.last_refresh_at > first_refresh
    assert again.connected_at == connection.connected_at
    assert await sync_log(pool) == []


async def test_without_a_vault_each_process_signs_in_for_itself(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    clients = [process(pool, http, key_pem, vault=False).client("acme", jwt_spec()) for _ in range(2)]

    for client in clients:
        await client.request("GET", LIMITS)

    assert len(salesforce.sign_ins) == 2
    assert await pool.fetchval("SELECT count(*) FROM vault_secrets") == 0
    assert await pool.fetchval("SELECT status FROM salesforce_connections WHERE tenant_id = 'acme'") == "connected"


async def test_a_refused_sign_in_is_one_error_for_that_tenant_until_a_sign_in_succeeds(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    replica = process(pool, http, key_pem)
    acme = replica.client("acme", jwt_spec())
    salesforce.refusal = {"error": "invalid_grant", "error_description": "invalid assertion"}

    for _ in range(3):
        with pytest.raises(ConnectionUnavailableError) as refused:
            await acme.request("GET", LIMITS)

    assert (refused.value.reason, refused.value.code) == ("error", "invalid_grant")
    assert not refused.value.awaits_connect
    assert "invalid_grant: invalid assertion" in str(refused.value)
    # Every attempt asked Salesforce (it may succeed next time), one row said so.
    assert len(salesforce.sign_ins) == 3
    assert await sync_log(pool) == [("acme", "writer", "connection.error", "invalid_grant")]
    row = await pool.fetchrow("SELECT status, last_error FROM salesforce_connections WHERE tenant_id = 'acme'")
    assert tuple(row) == ("error", "invalid_grant: invalid assertion")
    assert replica.gauge("acme") == 1
    # Another failure is news again.
    salesforce.refusal = {"error": "invalid_client_id", "error_description": "client identifier invalid"}
    with pytest.raises(ConnectionUnavailableError):
        await acme.request("GET", LIMITS)
    assert [r[3] for r in await sync_log(pool)] == ["invalid_grant", "invalid_client_id"]

    salesforce.refusal = None
    await acme.request("GET", LIMITS)

    assert await pool.fetchval("SELECT status FROM salesforce_connections WHERE tenant_id = 'acme'") == "connected"
    assert [r[2] for r in await sync_log(pool)][-1] == "connection.restored"
    assert replica.gauge("acme") == 0


async def test_a_policy_refusal_fails_the_tenant_with_the_rule_and_sends_nothing(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    replica = process(pool, http, key_pem)
    emulator_like = replica.client("acme", jwt_spec(loginUrl="https://127.0.0.1:8443"))
    globex = replica.client("globex", jwt_spec())

    with pytest.raises(ConnectionUnavailableError) as refused:
        await emulator_like.request("GET", LIMITS)
    await globex.request("GET", LIMITS)

    assert refused.value.code == "policy_violation"
    assert salesforce.sign_ins == [f"{MY_DOMAIN}/services/oauth2/token"]  # globex's only
    rows = await pool.fetch("SELECT tenant_id, event, code, message FROM sync_log")
    assert [(r["tenant_id"], r["event"], r["code"]) for r in rows] == [("acme", "connection.error", "policy_violation")]
    assert "localhost is only allowed when the deployment is for development" in rows[0]["message"]

    development = process(pool, http, key_pem, policy=SalesforcePolicy(development=True))
    # The development deployment may call it (the mock answers wherever it is).
    await development.client("acme", jwt_spec(loginUrl="https://127.0.0.1:8443")).request("GET", LIMITS)
    assert salesforce.sign_ins[-1] == "https://127.0.0.1:8443/services/oauth2/token"


async def test_a_revoked_tenant_is_not_signed_in_until_its_configuration_is_applied_again(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    replica = process(pool, http, key_pem)
    acme = replica.client("acme", jwt_spec())
    async with pool.acquire() as conn:
        assert await record_revoked(conn, "acme", server_side=True)

    for _ in range(2):
        with pytest.raises(ConnectionUnavailableError) as refused:
            await acme.request("GET", LIMITS)

    assert refused.value.reason == "revoked"
    assert refused.value.awaits_connect
    assert "once a new version of its configuration is applied" in str(refused.value)
    assert salesforce.sign_ins == []

    await apply_version(pool, "acme", 2)
    await acme.request("GET", LIMITS)

    assert len(salesforce.sign_ins) == 1
    assert await pool.fetchval("SELECT status FROM salesforce_connections WHERE tenant_id = 'acme'") == "connected"


async def test_a_token_signed_in_for_other_settings_is_not_served(
    pool: asyncpg.Pool, http: httpx.AsyncClient, salesforce: Salesforce, key_pem: str
) -> None:
    replica = process(pool, http, key_pem)
    await replica.client("acme", jwt_spec()).request("GET", LIMITS)

    # The tenant's document now names another user: its replicas must not go on as the first one.
    await replica.client("acme", jwt_spec(username="other@acme.example")).request("GET", LIMITS)

    assert salesforce.used == ["t1", "t2"]
    stored = await Vault(pool, KEYRING).get("acme", Purpose.ACCESS_TOKEN)
    assert stored is not None
    assert json.loads(stored)["access_token"] == "t2"
    assert await pool.fetchval("SELECT username FROM salesforce_connections") == "other@acme.example"

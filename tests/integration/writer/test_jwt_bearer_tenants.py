"""A tenant that signs in server-side with the JWT bearer flow (its connected app's certificate key),
with the writer running against the emulator process and sharing sessions through the vault, and
the admin API showing its connection.

The writer signs it in by itself (no browser step) and records the connection; a certificate removed
at Salesforce turns it to ``error`` (one sync-log row) while another tenant goes on, and it recovers
by itself once the certificate is back. Revoked through the admin API, it is not signed in again
until a new version of its configuration is applied. Nothing is ever rejected.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from devstack.emulator import EmulatorProcess
from services.common.salesforce import UnlimitedBudget, env_secrets
from services.common.topics import Topic, TopicNames
from services.common.values import Value
from services.common.vault import Keyring, Purpose, SessionToken, Vault, VaultSettings
from services.writer.app import run
from tests.fixtures.keys import private_key_pem
from tests.integration.admin_api.connecting import (
    PUBLIC_URL,
    Connecting,
    Org,
    browser,
    certify,
    jwt_salesforce_section,
    new_org,
)
from tests.integration.admin_api.harness import VAULT_KEYS, bearer, problem, serving
from tests.integration.writer.harness import (
    SUCCEEDED,
    TopicReader,
    WriteSettled,
    command,
    outcomes,
    prepare_database,
    secrets_for,
    send,
    tenant_document,
    upstream,
    writer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

JWT, PLAIN = "jwt", "plain"
KEY_ENV = "DUPLEX_SECRET_SF_KEY_JWT"
KEYRING = Keyring.parse(VAULT_KEYS)
LIMITS = "/services/data/v62.0/limits"


def settled(reader: TopicReader, tenant: str) -> list[WriteSettled]:
    return [s for s in outcomes(reader) if s.tenant_id == tenant]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.2)


@dataclass
class World:
    emulator: EmulatorProcess
    org: Org
    key: rsa.RSAPrivateKey
    connecting: Connecting
    reader: TopicReader
    send: Callable[[str, int], Awaitable[None]]
    service: str
    vault: Vault
    jwt_document: dict[str, Any]

    async def connection(self) -> dict[str, Any]:
        return await self.connecting.connection(JWT)

    async def status_is(self, status: str) -> bool:
        shown: str = (await self.connection())["status"]
        return shown == status

    async def connection_log(self) -> list[tuple[str, str, str | None]]:
        rows = await self.connecting.api.db.fetch(
            "SELECT service, event, code FROM sync_log WHERE tenant_id = $1 AND event LIKE 'connection.%' ORDER BY id",
            JWT,
        )
        return [tuple(r) for r in rows]


@asynccontextmanager
async def world(
    kafka_bootstrap: str, topic_names: TopicNames, dsn: str, emulator: EmulatorProcess
) -> AsyncIterator[World]:
    org = new_org(emulator)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certify(emulator, org, key)
    jwt_document = tenant_document(JWT, emulator)
    jwt_document["spec"]["salesforce"] = jwt_salesforce_section(emulator, org, KEY_ENV)
    await prepare_database(dsn, [jwt_document, tenant_document(PLAIN, emulator)])
    secrets = env_secrets({KEY_ENV: private_key_pem(key), **secrets_for(emulator, {PLAIN: "acme"})})
    settings = writer_settings(
        kafka_bootstrap,
        topic_names,
        dsn,
        emulator,
        service_name=f"writer-{uuid.uuid4().hex[:8]}",
        vault=VaultSettings(keys=SecretStr(VAULT_KEYS)),
    )
    run_id = f"j{uuid.uuid4().hex[:8]}-"
    async with (
        serving(dsn, secrets=secrets, public_url=PUBLIC_URL, salesforce_ca_file=emulator.ca_cert) as api,
        asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool,
        browser(emulator) as http,
        run(settings, secrets=secrets, budget=UnlimitedBudget()),
        TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
        upstream(kafka_bootstrap) as broker,
    ):

        async def send_batch(tenant: str, step: int) -> None:
            records: list[tuple[str, dict[str, Value]]] = [
                (f"{run_id}{tenant}-{step}-{n}", {"Name": f"{tenant} {step}.{n}"}) for n in range(5)
            ]
            await send(broker, topic_names, [command(tenant, records)])

        connecting = Connecting(api, emulator, http, await api.token())
        yield World(
            emulator,
            org,
            key,
            connecting,
            reader,
            send_batch,
            settings.service_name,
            Vault(pool, KEYRING),
            jwt_document,
        )
    assert {s.status for s in outcomes(reader)} == {SUCCEEDED}


async def test_a_jwt_bearer_tenant_signs_in_by_itself_and_a_removed_certificate_fails_it_alone(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    async with world(kafka_bootstrap, topic_names, fresh_database, emulator) as w:
        await w.send(JWT, 1)
        await w.send(PLAIN, 1)
        await w.reader.until(
            lambda: len(settled(w.reader, JWT)) == 5 and len(settled(w.reader, PLAIN)) == 5,
            within=60,
            what="both tenants' first batch",
        )

        shown = await w.connection()
        assert (shown["authMode"], shown["status"]) == ("jwt_bearer", "connected")
        assert (shown["orgId"], shown["userId"], shown["username"]) == (w.org.org_id, w.org.user_id, w.org.username)
        assert shown["instanceUrl"] == w.emulator.instance_url
        assert shown["connectedBy"] == w.service
        assert shown["lastError"] is None
        # Nothing for a browser to do.
        started = await w.connecting.api.http.post(
            f"/api/v1/tenants/{JWT}/connection:authorize", headers=bearer(w.connecting.admin)
        )
        assert "there is no browser step" in problem(started, 409)["detail"]

        # The org's admin removes the certificate from the connected app, and every session ends.
        certify(w.emulator, w.org, None)
        w.emulator.admin("POST", f"/orgs/{w.org.org_id}/tokens/expire")
        await w.send(JWT, 2)
        await w.send(PLAIN, 2)
        await w.reader.until(lambda: len(settled(w.reader, PLAIN)) == 10, within=60, what="the other tenant")
        await eventually(lambda: w.status_is("error"), "the JWT tenant in error")

        shown = await w.connection()
        assert shown["lastError"] == "invalid_grant: invalid assertion"
        assert shown["orgId"] == w.org.org_id
        await w.reader.poll()
        assert len(settled(w.reader, JWT)) == 5  # held, not rejected
        assert await w.connection_log() == [(w.service, "connection.error", "invalid_grant")]

        # The certificate is back: the writer's next attempt signs in, and the held batch goes through.
        certify(w.emulator, w.org, w.key)
        await w.reader.until(lambda: len(settled(w.reader, JWT)) == 10, within=120, what="the held batch")
        assert await w.status_is("connected")
        assert await w.connection_log() == [
            (w.service, "connection.error", "invalid_grant"),
            (w.service, "connection.restored", None),
        ]


async def test_a_revoked_jwt_bearer_tenant_waits_for_its_configuration_to_be_applied_again(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    async with world(kafka_bootstrap, topic_names, fresh_database, emulator) as w:
        await w.send(JWT, 1)
        await w.reader.until(lambda: len(settled(w.reader, JWT)) == 5, within=60, what="the first batch")
        api, admin = w.connecting.api, w.connecting.admin
        # The shared access token is all the vault holds for it: there is no refresh token.
        assert await api.db.fetchval("SELECT count(*) FROM vault_secrets WHERE tenant_id = $1", JWT) == 1
        access = await w.vault.get(JWT, Purpose.ACCESS_TOKEN)
        assert access is not None
        token = SessionToken.from_json(access)

        revoked = await api.http.post(f"/api/v1/tenants/{JWT}/connection:revoke", headers=bearer(admin))

        assert revoked.status_code == 200, revoked.text
        assert (revoked.json()["authMode"], revoked.json()["status"]) == ("jwt_bearer", "revoked")
        assert await api.db.fetchval("SELECT count(*) FROM vault_secrets WHERE tenant_id = $1", JWT) == 0
        refused = await w.connecting.http.get(
            token.instance_url + LIMITS, headers={"Authorization": f"Bearer {token.access_token}"}
        )
        assert refused.status_code == 401
        await w.send(JWT, 2)
        await w.send(PLAIN, 2)
        # The writer went through both batches: the other tenant's is written, the revoked one's held,
        # and the tenant was not signed in again (its status would say so).
        await w.reader.until(lambda: len(settled(w.reader, PLAIN)) == 5, within=60, what="the other tenant")
        assert len(settled(w.reader, JWT)) == 5
        assert await w.status_is("revoked")

        changed = copy.deepcopy(w.jwt_document)
        changed["spec"]["salesforce"]["dailyApiCap"] = 90_000
        applied = await api.http.put(f"/api/v1/tenants/{JWT}", json=changed, headers=bearer(admin))
        assert applied.status_code == 200, applied.text

        await w.reader.until(lambda: len(settled(w.reader, JWT)) == 10, within=60, what="the batch held while revoked")
        assert await w.status_is("connected")
        assert await w.connection_log() == []

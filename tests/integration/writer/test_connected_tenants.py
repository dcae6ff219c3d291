"""A tenant whose tokens live in the vault (auth mode oauth_pkce), with the writer running: its writes
wait while it is not connected, go through once an admin connects it through the admin API (no
restart), and wait again when Salesforce refuses its grant; another tenant's writes never wait, and
nothing is rejected."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from devstack.emulator import EmulatorProcess
from services.common.salesforce import UnlimitedBudget, env_secrets
from services.common.topics import Topic, TopicNames
from services.common.vault import Keyring, Purpose, Vault, VaultSettings
from services.writer.app import run
from tests.integration.admin_api.connecting import (
    PUBLIC_URL,
    Connecting,
    Org,
    browser,
    new_org,
    salesforce_section,
)
from tests.integration.admin_api.harness import VAULT_KEYS, serving
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

VAULTED, PLAIN = "vaulted", "plain"


def settled(reader: TopicReader, tenant: str) -> list[WriteSettled]:
    return [s for s in outcomes(reader) if s.tenant_id == tenant]


def vaulted_document(emulator: EmulatorProcess, org: Org) -> dict[str, Any]:
    document = tenant_document(VAULTED, emulator)
    document["spec"]["salesforce"] = salesforce_section(emulator, org)
    return document


async def test_a_tenant_connected_while_the_writer_runs_is_written_to_without_a_restart(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    org = new_org(emulator)
    await prepare_database(fresh_database, [vaulted_document(emulator, org), tenant_document(PLAIN, emulator)])
    secrets = env_secrets({org.secret_env: org.client_secret, **secrets_for(emulator, {PLAIN: "acme"})})
    settings = writer_settings(
        kafka_bootstrap,
        topic_names,
        fresh_database,
        emulator,
        service_name=f"writer-{uuid.uuid4().hex[:8]}",
        vault=VaultSettings(keys=SecretStr(VAULT_KEYS)),
    )
    run_id = f"v{uuid.uuid4().hex[:8]}-"

    def batch(tenant: str, step: int) -> Any:
        return command(tenant, [(f"{run_id}{tenant}-{step}-{n}", {"Name": f"{tenant} {n}"}) for n in range(5)])

    async with (
        serving(fresh_database, secrets=secrets, public_url=PUBLIC_URL, salesforce_ca_file=emulator.ca_cert) as api,
        asyncpg.create_pool(fresh_database, min_size=1, max_size=2) as pool,
        browser(emulator) as http,
        run(settings, secrets=secrets, budget=UnlimitedBudget()),
        TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
        upstream(kafka_bootstrap) as broker,
    ):
        connecting = Connecting(api, emulator, http, await api.token())
        await send(broker, topic_names, [batch(VAULTED, 1), batch(PLAIN, 1)])
        await reader.until(lambda: len(settled(reader, PLAIN)) == 5, within=60, what="the plain tenant")
        await asyncio.sleep(2)
        await reader.poll()
        # Not connected: held, not rejected.
        assert settled(reader, VAULTED) == []

        await connecting.connect(VAULTED)
        await reader.until(lambda: len(settled(reader, VAULTED)) == 5, within=30, what="the connected tenant")

        # An org admin revokes Duplex's grant.
        refresh_token = await Vault(pool, Keyring.parse(VAULT_KEYS)).get(VAULTED, Purpose.REFRESH_TOKEN)
        assert refresh_token is not None
        revoked = await http.post(emulator.info["login_url"] + "/services/oauth2/revoke", data={"token": refresh_token})
        assert revoked.status_code == 200
        await send(broker, topic_names, [batch(VAULTED, 2), batch(PLAIN, 2)])
        await reader.until(lambda: len(settled(reader, PLAIN)) == 10, within=60, what="the plain tenant again")
        for _ in range(50):
            if (await connecting.connection(VAULTED))["status"] == "needs_reconnect":
                break
            await asyncio.sleep(0.2)
        await reader.poll()

        assert (await connecting.connection(VAULTED))["status"] == "needs_reconnect"
        assert len(settled(reader, VAULTED)) == 5
        log = await api.db.fetch(
            "SELECT service, event FROM sync_log WHERE tenant_id = $1 AND event LIKE 'connection.%'", VAULTED
        )
        assert [tuple(r) for r in log] == [(settings.service_name, "connection.needs_reconnect")]

    assert {s.status for s in outcomes(reader)} == {SUCCEEDED}

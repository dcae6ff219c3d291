"""A record Salesforce rejected for a field the mapping lacked is retried after the fix, through the
real services, the example app and the admin API's route.

The tenant's partners pair first has no rule for the name, which Salesforce requires of an Account
(a configuration the admin API refuses; stored directly, as a version applied before that check
existed would be). A partner created in the app is written without a Name and rejected:
REQUIRED_FIELD_MISSING. Duplex holds no name to send: it keeps mapped fields only. The rule is
added, and the retry is asked for through ``POST /retries``: the app publishes the partner again,
the new mapping maps its name, and the Account is created once, with the name and the fields the
first write carried, and the sync log tells the story in order.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.admin.auth import Role
from services.admin.config_store import ConfigStore
from services.common.settings import KafkaSettings
from services.common.tenant_config import parse_tenant_config
from services.common.topics import TopicNames
from tests.e2e.pipeline.harness import TenantSpec, running
from tests.e2e.pipeline.world import tenant_document
from tests.integration.admin_api.harness import bearer, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TENANT = "alpha"
PARTNER = {"name": "Retried Partners Ltd", "phone": "+1 555 0100", "notes": "created before the name was mapped"}


async def eventually(what: str, check: Callable[[], Awaitable[Any]], within: float = 90.0) -> Any:
    """``check()``'s first truthy answer, polled; fails naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f}s"
        await asyncio.sleep(0.3)
    return found


async def apply(conn: Any, document: dict[str, Any]) -> None:
    await ConfigStore(conn).apply([parse_tenant_config(document)], "retry test")


async def test_a_create_rejected_for_an_unmapped_required_field_lands_once_after_the_fix_and_a_retry(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    specs = [TenantSpec(TENANT, "org-retry", 5_000)]
    # Mapping reads the tenant's version on every batch: the retry below is asked for right after
    # the fix, and must be mapped by it (by default it may be up to a second late).
    fresh_mapping = {"mapping": {"MAPPING_CONFIG_CHECK_SECONDS": "0"}}
    async with running(
        emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs, overrides=fresh_mapping
    ) as run:
        (alpha,) = run.tenants
        fixed = tenant_document(TENANT, emulator, "org-retry-client", 5_000)
        broken = copy.deepcopy(fixed)
        pair = broken["spec"]["objects"][0]
        pair["fields"] = [f for f in pair["fields"] if f["app"] != "name"]
        conn = await asyncpg.connect(fresh_database)
        try:
            await apply(conn, broken)
            await run.services.start()
            await run.apps[TENANT].start()

            app_id = await alpha.app.create(PARTNER)

            async def rejection() -> Any:
                return await conn.fetchrow(
                    "SELECT s.link_id, s.code, s.detail FROM sync_log s JOIN links l USING (tenant_id, link_id)"
                    " WHERE s.tenant_id = $1 AND l.app_record_id = $2 AND s.event = 'write.rejected'"
                    " AND s.service = 'conflict-resolver'",
                    TENANT,
                    app_id,
                )

            rejected = await eventually("Salesforce rejects the partner", rejection)
            assert rejected["code"] == "REQUIRED_FIELD_MISSING"
            link_id = rejected["link_id"]
            assert await alpha.crm.accounts() == {}

            await apply(conn, fixed)
            kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap_servers, topic_prefix=topic_names.prefix)
            async with serving(fresh_database, kafka=kafka) as api:
                operator = await api.token(Role.OPERATOR, name="on call")
                answer = await api.http.post(
                    f"/api/v1/tenants/{TENANT}/retries", json={"record": app_id}, headers=bearer(operator)
                )
            assert answer.status_code == 202, answer.text
            assert (answer.json()["requested"], answer.json()["records"][0]["linkId"]) == (1, link_id)

            async def synced_back() -> Any:
                return (await alpha.app.rows())[app_id]["salesforce_id"]

            # The Account's id comes back to the app: created, its echo read, the app updated.
            account_id = await eventually("the partner reaches Salesforce and its id the app", synced_back)
            accounts = await alpha.crm.accounts()
            assert list(accounts) == [account_id]
            account = accounts[account_id]
            assert (account["Name"], account["Phone"], account["Description"], account["Duplex_Id__c"]) == (
                PARTNER["name"],
                PARTNER["phone"],
                PARTNER["notes"],
                f"dx-{link_id}",
            )

            events = [
                (r["event"], r["record_id"])
                for r in await conn.fetch(
                    # The conflict-resolver's rows (the writer logs the rejection too, on its own time)
                    # and the admin API's.
                    "SELECT event, record_id FROM sync_log WHERE tenant_id = $1 AND link_id = $2"
                    " AND service IN ('conflict-resolver', 'admin-api')"
                    " AND event IN ('write.rejected', 'record.resend_requested', 'record.created') ORDER BY id",
                    TENANT,
                    link_id,
                )
            ]
            assert events == [
                ("write.rejected", None),
                ("record.resend_requested", app_id),
                ("record.created", account_id),
            ]
            assert await conn.fetchval(
                "SELECT count(*) FROM sync_log WHERE tenant_id = $1 AND event = 'write.succeeded'", TENANT
            )
        finally:
            await conn.close()

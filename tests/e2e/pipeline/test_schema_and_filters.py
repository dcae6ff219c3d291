"""Schema drift and a pair filter through the real services, none of them restarted.

Drift: the org's admin deletes a field that one rule sends to Salesforce. After one schema refresh
the rule is warned of and paused, and the pair's other rules keep syncing: an app edit of the name
and of the deleted field together still brings the name to Salesforce. Before, every such write
carried the deleted field and Salesforce refused it whole.

Filter: a new configuration version adds ``filter.soql``. A linked record whose Salesforce notes
stop matching leaves the filter: its later Salesforce edits no longer reach the app. When its notes
match again, it comes back whole: the app gets every field as Salesforce holds it, the edits made
meanwhile included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.admin.config_store import ConfigStore
from services.common.schema_refresh import refresh
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from tests.e2e.pipeline.harness import TenantSpec, eventually, read_topic, running, synced
from tests.e2e.pipeline.world import API, SalesforceSide, partner_object, tenant_document

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CRM = partner_object("Partner__c")


class SideReader:
    """The schema reads of a refresh, made by the test as the org's admin (the refresh is Duplex's)."""

    def __init__(self, side: SalesforceSide) -> None:
        self._side = side

    async def catalog(self) -> list[Mapping[str, Any]]:
        return list((await self._side.call("GET", f"{API}/sobjects"))["sobjects"])

    async def describe(self, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] = await self._side.call("GET", f"{API}/sobjects/{name}/describe")
        return found

    async def cdc_selection(self) -> list[str]:
        query = "SELECT+SelectedEntity+FROM+PlatformEventChannelMember+WHERE+EventChannel+=+'ChangeEvents'"
        return [
            r["SelectedEntity"] for r in (await self._side.call("GET", f"{API}/tooling/query?q={query}"))["records"]
        ]


async def until(what: str, attempt: Callable[[int], Awaitable[bool]], within: float = 120.0) -> None:
    """``attempt(n)`` for n = 0, 1, … until it is true; each attempt makes its own new edit."""
    deadline = time.monotonic() + within
    n = 0
    while not await attempt(n):
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f}s"
        n += 1


async def test_drift_pauses_one_rule_and_a_filter_lets_a_record_leave_and_come_back(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    specs = [TenantSpec("alpha", "org-drift", 5_000, CRM)]
    async with running(emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs) as run:
        await synced(run, 2)
        (alpha,) = run.tenants
        alpha.link(await alpha.app.rows())
        record = next(r for r in alpha.records if r.origin == "app")
        assert record.app_id is not None
        assert record.crm_id is not None
        app_id, crm_id = record.app_id, record.crm_id
        document = tenant_document("alpha", emulator, "org-drift-client", 5_000, CRM)
        conn = await asyncpg.connect(fresh_database)
        try:
            # --- drift: Phone__c, which the app's phone is sent to, is deleted in Setup.
            run.org_admin("DELETE", "alpha", "/objects/Partner__c/fields/Phone__c")
            done = await refresh(conn, parse_tenant_config(document), SideReader(alpha.crm), service="test")
            assert [(w.app_field, str(w.change.kind), w.paused) for w in done.warnings] == [
                ("phone", "field_removed", True)
            ]

            async def name_arrives(n: int) -> bool:
                name = f"after the drift {n}"
                await alpha.app.update(app_id, {"name": name, "phone": f"+1 555 {n:04d}"})
                return await eventually(lambda: _crm_holds(alpha.crm, crm_id, "Name", name), within=10)

            await until("the name, beside the paused phone, reaches Salesforce", name_arrives)

            # --- filter: a new version keeps records whose notes are not private.
            document["spec"]["objects"][0]["filter"] = {"soql": "NOT Notes__c LIKE 'private%'"}
            await ConfigStore(conn).apply([parse_tenant_config(document)], "filter test")
            link_id = await conn.fetchval(
                "SELECT link_id FROM links WHERE tenant_id = 'alpha' AND crm_record_id = $1", crm_id
            )

            async def leaves(n: int) -> bool:
                await alpha.crm.update(crm_id, {"Notes__c": f"private {n}"})
                return await eventually(lambda: _outside(conn, link_id), within=10)

            await until("the record leaves the filter", leaves)

            # Its Salesforce edits stay in Salesforce; cdc-ingest (restarted on the new version by its
            # supervisor) reads the filter's field for each update.
            async def completed(n: int) -> bool:
                await alpha.crm.update(crm_id, {"Name": f"while outside {n}"})
                return await eventually(lambda: _update_carries(run, crm_id, "Notes__c", f"while outside {n}"), 10)

            await until("an update arrives with the record's notes", completed)
            name_outside = (await _crm_record(alpha.crm, crm_id))["Name"]
            assert (await alpha.app.rows())[app_id]["name"] != name_outside
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM sync_log WHERE tenant_id = 'alpha' AND event = 'change.left_filter'"
                )
                == 1
            )

            # Back in: the app gets the record whole, the name edited meanwhile included.
            await alpha.crm.update(crm_id, {"Notes__c": "public again"})

            async def back() -> bool:
                row = (await alpha.app.rows())[app_id]
                return bool(row["name"] == name_outside and row["notes"] == "public again")

            assert await eventually(back, within=60), (await alpha.app.rows())[app_id]
            assert not await _outside(conn, link_id)
        finally:
            await conn.close()


async def _crm_record(side: SalesforceSide, record_id: str) -> dict[str, Any]:
    # Not side.accounts(): it selects the deleted Phone__c.
    found: dict[str, Any] = await side.call("GET", f"{API}/sobjects/{CRM.name}/{record_id}")
    return found


async def _crm_holds(side: SalesforceSide, record_id: str, field: str, value: str) -> bool:
    return bool((await _crm_record(side, record_id))[field] == value)


async def _outside(conn: Any, link_id: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM outside_filter WHERE link_id = $1", link_id))


async def _update_carries(run: Any, record_id: str, field: str, name: str) -> bool:
    for message in await read_topic(run, Topic.CRM_CHANGES):
        change = record_changed_pb2.RecordChanged.FromString(message.value)
        if change.record_id != record_id or field not in change.fields or field in change.changed_fields:
            continue
        if change.fields["Name"].string_value == name:
            return True
    return False

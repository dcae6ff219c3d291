"""The mapping service through the real broker and database: links, binding, references, rejects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from pydantic import SecretStr

from services.cdc_ingest.translate import set_master_records
from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.contract import to_value
from services.common.dlq import ERROR_REASON
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.topics import Topic, TopicNames
from services.common.values import Reference
from services.mapping.app import run
from services.mapping.links import external_id_for, link_id_for
from services.mapping.settings import MappingSettings
from tests.e2e.sync.harness import TENANT, TopicReader, decode, prepare_database, producer, publish, record_changed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ChangeMapped = change_mapped_pb2.ChangeMapped


@asynccontextmanager
async def running_mapping(bootstrap: str, names: TopicNames, dsn: str) -> AsyncIterator[None]:
    settings = MappingSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=names.prefix),
        postgres=PostgresSettings(dsn=SecretStr(dsn), pool_max_size=3),
        config_check_seconds=0,
    )
    async with run(settings) as running:
        assert await running.health.is_ready()
        yield
        assert running.halt.error is None


async def test_changes_from_both_sides_meet_on_one_link_and_bad_input_is_dead_lettered(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    link = link_id_for(TENANT, "partners", Side.APP, "a1")
    app_create = record_changed(
        Side.APP, "partners", "a1", {"name": "Acme", "status": "active"}, event_id="app-1", kind=ChangeKind.CREATE
    )
    # Salesforce's CDC event for the record Duplex created: it carries the link's external id.
    crm_create = record_changed(
        Side.CRM,
        "Account",
        "001A",
        {"Name": "Acme", "Status__c": "Active", "Duplex_Id__c": external_id_for(link)},
        event_id="crm-1",
        kind=ChangeKind.CREATE,
        at=1,
        client="duplex-acme",
    )
    # A contact referencing the partner before the partner has a Salesforce id: held, then released.
    contact = record_changed(
        Side.APP, "contacts", "c1", {"last_name": "Doe", "partner_id": "a1"}, event_id="app-2", kind=ChangeKind.CREATE
    )
    unknown = record_changed(Side.APP, "invoices", "i1", {"n": 1}, event_id="app-3")
    too_long = record_changed(Side.APP, "partners", "a2", {"name": "x" * 41}, event_id="app-4")
    async with producer(kafka_bootstrap) as upstream:
        app_key = record_key(TENANT, "partners", "a1")
        await publish(upstream, topic_names, Topic.APP_CHANGES, app_create, app_key)
        await publish(upstream, topic_names, Topic.APP_CHANGES, app_create, app_key)  # redelivered
        await publish(upstream, topic_names, Topic.APP_CHANGES, contact, record_key(TENANT, "contacts", "c1"))
        await publish(upstream, topic_names, Topic.APP_CHANGES, unknown, record_key(TENANT, "invoices", "i1"))
        await publish(upstream, topic_names, Topic.APP_CHANGES, too_long, record_key(TENANT, "partners", "a2"))
        async with running_mapping(kafka_bootstrap, topic_names, fresh_database):
            async with TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped:
                await mapped.until(3)
                await publish(
                    upstream, topic_names, Topic.CRM_CHANGES, crm_create, record_key(TENANT, "Account", "001A")
                )
                await mapped.until(5)
                events = decode(await mapped.settle(), ChangeMapped)
            async with TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq:
                dead = await dlq.until(2)

    by_source: dict[tuple[str, str], list[ChangeMapped]] = {}
    for e in events:
        by_source.setdefault((e.source_event_id, e.fields[0].app_field), []).append(e)
    first, again = by_source[("app-1", "name")]
    assert first.event_id == again.event_id  # the same change maps to the same event
    assert first.link_id == link
    assert first.external_id == "dx-" + link
    assert {f.app_field: to_value(f.crm_value) for f in first.fields} == {"name": "Acme", "status": "Active"}
    (from_crm,) = by_source[("crm-1", "name")]
    assert from_crm.link_id == link  # bound through the external id, before any writer reported the id
    assert from_crm.crm_record_id == "001A"
    assert from_crm.origin_client == "duplex-acme"
    (contact_event,) = by_source[("app-2", "last_name")]
    assert [f.app_field for f in contact_event.fields] == ["last_name"]
    assert "partner_id" in [d.field for d in contact_event.dropped_fields]
    (released,) = by_source[("app-2", "partner_id")]
    assert to_value(released.fields[0].app_value) == Reference("a1")
    assert to_value(released.fields[0].crm_value) == Reference("001A")
    assert len(dead) == 2

    conn = await asyncpg.connect(fresh_database)
    try:
        links = await conn.fetch("SELECT object_pair, app_record_id, crm_record_id FROM links ORDER BY object_pair")
        codes = sorted(r["code"] for r in await conn.fetch("SELECT code FROM sync_log WHERE event = 'change.rejected'"))
    finally:
        await conn.close()
    assert [tuple(r) for r in links] == [("contacts", "c1", None), ("partners", "a1", "001A")]
    assert codes == ["STRING_TOO_LONG", "UNKNOWN_OBJECT"]


def merge_loser(record_id: str, master: str, event_id: str) -> record_changed_pb2.RecordChanged:
    """A merge loser's DELETE as cdc-ingest publishes it: no changed fields, the winner in MasterRecordId."""
    event = record_changed(Side.CRM, "Account", record_id, {}, event_id=event_id, kind=ChangeKind.DELETE, at=1)
    assert set_master_records([event], {("Account", record_id): master}) == 1
    return event


async def test_a_merge_repoints_or_retires_the_losers_link_without_deleting_app_records(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id) VALUES"
            " ('acme', 'partners', 'L1', 'a1', '001L', 'dx-L1'), ('acme', 'partners', 'L2', 'a2', '001K', 'dx-L2'),"
            " ('acme', 'partners', 'L3', 'a3', '001W', 'dx-L3'), ('acme', 'partners', 'L4', 'a4', '001J', 'dx-L4')"
        )
    finally:
        await conn.close()

    def master_update(record_id: str, event_id: str) -> record_changed_pb2.RecordChanged:
        return record_changed(Side.CRM, "Account", record_id, {"Phone": "555"}, event_id=event_id, at=1)

    # 001L merged into 001N (no link yet): L1 moves, and 001N's update then finds it.
    # 001K merged into 001W (linked as L3): L2 retires.
    # 001J merged into 001M, whose update comes first (another key) and founds a link without an
    # app record: L4, which has one, absorbs it.
    first = [master_update("001M", "u-m")]
    merges = [
        merge_loser("001L", "001N", "m1"),
        merge_loser("001K", "001W", "m2"),
        merge_loser("001J", "001M", "m3"),
    ]
    then = [master_update("001N", "u-n"), master_update("001W", "u-w")]
    early = link_id_for(TENANT, "partners", Side.CRM, "001M")
    async with producer(kafka_bootstrap) as upstream:

        async def send(events: list[record_changed_pb2.RecordChanged]) -> None:
            for e in events:
                await publish(upstream, topic_names, Topic.CRM_CHANGES, e, record_key(TENANT, "Account", e.record_id))

        async with (
            running_mapping(kafka_bootstrap, topic_names, fresh_database),
            TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped,
        ):
            await send(first)
            await mapped.until(1)
            await send(merges)
            conn = await asyncpg.connect(fresh_database)
            try:
                for _ in range(100):
                    merged = await conn.fetchval("SELECT count(*) FROM sync_log WHERE event = 'link.merged'")
                    if merged == 3:
                        break
                    await asyncio.sleep(0.1)
                await send(then)
                await mapped.until(3)
                events = decode(await mapped.settle(quiet=1.0), ChangeMapped)
                rows = await conn.fetch(
                    "SELECT link_id, crm_record_id, merged_into FROM links ORDER BY app_record_id, link_id"
                )
            finally:
                await conn.close()
    assert [tuple(r) for r in rows] == [
        ("L1", "001N", None),
        ("L2", None, "L3"),
        ("L3", "001W", None),
        ("L4", "001M", None),
        (early, None, "L4"),
    ]
    # No app delete was asked for: only the winners' updates travel, on the links that survived.
    assert sorted((e.source_event_id, e.kind, e.link_id, e.app_record_id) for e in events) == [
        ("u-m", record_changed_pb2.CHANGE_KIND_UPDATE, early, ""),
        ("u-n", record_changed_pb2.CHANGE_KIND_UPDATE, "L1", "a1"),
        ("u-w", record_changed_pb2.CHANGE_KIND_UPDATE, "L3", "a3"),
    ]


async def test_salesforce_describe_drops_formula_fields_and_rejects_over_long_strings(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        # As cdc-ingest writes it. The mapping sets no length for Phone and maps Status__c both ways.
        describe = {
            "Name": {"type": "string", "length": 255, "createable": True, "updateable": True, "calculated": False},
            "Phone": {"type": "phone", "length": 10, "createable": True, "updateable": True, "calculated": False},
            "Status__c": {"type": "string", "length": 20, "createable": False, "updateable": False, "calculated": True},
        }
        await conn.execute(
            "INSERT INTO crm_object_fields (tenant_id, object_name, fields) VALUES ($1, 'Account', $2::jsonb)",
            TENANT,
            json.dumps(describe),
        )
    finally:
        await conn.close()
    changes = [
        record_changed(Side.APP, "partners", "a1", {"name": "Acme", "status": "active"}, event_id="both"),
        record_changed(Side.APP, "partners", "a1", {"status": "closed"}, event_id="formula-only", at=1),
        record_changed(Side.APP, "partners", "a1", {"phone": "+1 555 0100 22"}, event_id="too-long", at=2),
        record_changed(Side.APP, "partners", "a1", {"phone": "555-0100"}, event_id="fits", at=3),
    ]
    async with producer(kafka_bootstrap) as upstream:
        for change in changes:
            await publish(upstream, topic_names, Topic.APP_CHANGES, change, record_key(TENANT, "partners", "a1"))
        async with running_mapping(kafka_bootstrap, topic_names, fresh_database):
            async with TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped:
                await mapped.until(2)
                events = decode(await mapped.settle(quiet=1.0), ChangeMapped)
            async with TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq:
                (dead,) = await dlq.until(1)

    assert [e.source_event_id for e in events] == ["both", "fits"]
    both = events[0]
    assert [f.crm_field for f in both.fields] == ["Name"]  # the formula field is not sent to Salesforce
    assert [(d.field, d.reason) for d in both.dropped_fields] == [("status", "read-only in Salesforce (formula field)")]
    reason = dict(dead.headers)[ERROR_REASON].decode()
    assert reason.startswith("STRING_TOO_LONG: Phone: 14 characters, at most 10 allowed")

    conn = await asyncpg.connect(fresh_database)
    try:
        log = await conn.fetch("SELECT event, code, message, detail FROM sync_log ORDER BY id")
    finally:
        await conn.close()
    # A change whose only field was dropped sends nothing; the sync log says why.
    assert [(r["event"], r["code"]) for r in log] == [("change.dropped", None), ("change.rejected", "STRING_TOO_LONG")]
    assert log[0]["message"] == "status: read-only in Salesforce (formula field)"
    assert json.loads(log[0]["detail"])["source_event_id"] == "formula-only"

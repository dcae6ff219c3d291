"""The mapping service through the real broker and database: links, binding, references, rejects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from duplex.mapping.v1 import change_mapped_pb2
from pydantic import SecretStr

from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.kafka import run_service
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.topics import Topic, TopicNames
from services.common.values import Reference, to_value
from services.mapping.app import build_app
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
    service = build_app(settings)
    task = asyncio.create_task(run_service(service.app, service.kafka.halt))
    try:
        yield
    finally:
        service.app.exit()
        await asyncio.wait_for(task, 20)


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


async def test_a_lead_conversion_and_a_merge_repoint_links_without_deleting_app_records(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id) VALUES"
            " ('acme', 'partners', 'L1', 'a1', '001L', 'dx-L1'), ('acme', 'partners', 'L2', 'a2', '001K', 'dx-L2'),"
            " ('acme', 'partners', 'L3', 'a3', '001W', 'dx-L3')"
        )
    finally:
        await conn.close()
    # 001L merged into 001N (no link yet): L1 moves. 001K merged into 001W (linked as L3): L2 retires.
    merges = [
        record_changed(Side.CRM, "Account", "001L", {"MasterRecordId": "001N"}, event_id="m1", kind=ChangeKind.DELETE),
        record_changed(Side.CRM, "Account", "001K", {"MasterRecordId": "001W"}, event_id="m2", kind=ChangeKind.DELETE),
    ]
    async with producer(kafka_bootstrap) as upstream:
        for m in merges:
            await publish(upstream, topic_names, Topic.CRM_CHANGES, m, record_key(TENANT, "Account", m.record_id))
        async with running_mapping(kafka_bootstrap, topic_names, fresh_database):
            conn = await asyncpg.connect(fresh_database)
            try:
                for _ in range(100):
                    merged = await conn.fetchval("SELECT count(*) FROM sync_log WHERE event = 'link.merged'")
                    if merged == 2:
                        break
                    await asyncio.sleep(0.1)
                rows = await conn.fetch("SELECT link_id, crm_record_id, merged_into FROM links ORDER BY link_id")
            finally:
                await conn.close()
            async with TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped:
                assert await mapped.settle(quiet=1.0) == []  # no app delete was asked for
    assert [tuple(r) for r in rows] == [("L1", "001N", None), ("L2", None, "L3"), ("L3", "001W", None)]

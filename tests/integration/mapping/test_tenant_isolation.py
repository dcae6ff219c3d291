"""The mapping service through the real broker and database: one tenant's poison stream
quarantines that tenant's pair only, a bad deploy still halts, and producer fields are checked."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.admin.config_store import ConfigStore
from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.db import migrate
from services.common.dlq import ERROR_REASON
from services.common.service import Running
from services.common.settings import KafkaSettings, PostgresSettings, TelemetrySettings
from services.common.telemetry import Telemetry, setup_telemetry
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from services.mapping.app import run
from services.mapping.settings import MappingSettings
from tests.e2e.sync.harness import CLIENT, CONFIG, TENANT, TopicReader, decode, producer, publish, record_changed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ChangeMapped = change_mapped_pb2.ChangeMapped
OTHER = "beta"
TOO_LONG = "x" * 41  # partners.name allows 40


async def prepare(dsn: str) -> None:
    """Both tenants configured alike."""
    other = copy.deepcopy(CONFIG)
    other["metadata"]["name"] = OTHER
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(CONFIG), parse_tenant_config(other)], "test")
    finally:
        await conn.close()


@asynccontextmanager
async def mapping(
    bootstrap: str, names: TopicNames, dsn: str, *, max_request_size: int = 1024 * 1024
) -> AsyncIterator[tuple[Running, Telemetry]]:
    settings = MappingSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=names.prefix, max_request_size=max_request_size),
        postgres=PostgresSettings(dsn=SecretStr(dsn), pool_max_size=3),
        config_check_seconds=0,
    )
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", install_global=False, registry=CollectorRegistry()
    )
    async with run(settings, telemetry) as running:
        yield running, telemetry


def partner(tenant: str, n: int, name: str = "Acme", **options: Any) -> record_changed_pb2.RecordChanged:
    event = record_changed(
        Side.APP,
        "partners",
        f"{tenant}-{n}",
        {"name": name},
        event_id=f"{tenant}-{n}",
        kind=ChangeKind.CREATE,
        **options,
    )
    event.tenant_id = tenant
    return event


async def send(upstream: KafkaBroker, names: TopicNames, events: list[record_changed_pb2.RecordChanged]) -> None:
    for e in events:
        await publish(upstream, names, Topic.APP_CHANGES, e, record_key(e.tenant_id, e.object_type, e.record_id))


async def sync_log(dsn: str, event: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT * FROM sync_log WHERE event = $1 ORDER BY id", event))
    finally:
        await conn.close()


def reasons(records: list[Any]) -> list[str]:
    return [dict(r.headers)[ERROR_REASON].decode() for r in records]


async def test_a_poison_stream_quarantines_its_pair_while_another_tenant_keeps_being_mapped(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare(fresh_database)
    async with (
        producer(kafka_bootstrap) as upstream,
        mapping(kafka_bootstrap, topic_names, fresh_database) as (running, telemetry),
        TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped,
        TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq,
    ):
        await send(upstream, topic_names, [partner(OTHER, n) for n in range(5)])
        await mapped.until(5)
        # 150 poisoned changes: more than the service-wide breaker's 100 invalid events in a row.
        poison = [partner(TENANT, n, TOO_LONG) for n in range(150)]
        await send(upstream, topic_names, poison + [partner(OTHER, n) for n in range(5, 25)])
        await mapped.until(25)
        dead = await dlq.until(150)
        # Quarantined, acme's good changes are dead-lettered too, with the quarantine as reason.
        await send(upstream, topic_names, [partner(TENANT, 200), partner(OTHER, 200)])
        await mapped.until(26)
        dead = await dlq.until(151)
        assert running.halt.error is None
        assert await running.health.is_ready()

    tenants = {e.tenant_id for e in decode(mapped.records, ChangeMapped)}
    assert tenants == {OTHER}
    why = reasons(dead)
    quarantined = [r for r in why if r.startswith("QUARANTINED: pair 'partners' of tenant 'acme' is quarantined")]
    # The default quarantine begins at the 20th rejection: the 19 before it count service-wide.
    assert len(quarantined) == 151 - 19
    assert len([r for r in why if r.startswith("STRING_TOO_LONG: ")]) == 19
    (row,) = await sync_log(fresh_database, "pair.quarantined")
    assert (row["tenant_id"], row["code"]) == (TENANT, "QUARANTINED")
    registry = telemetry.metrics.registry
    labels = {"service": "mapping", "tenant": TENANT, "pair": "partners"}
    assert registry.get_sample_value("duplex_quarantined_pairs", labels) == 1
    assert (registry.get_sample_value("duplex_quarantined_events_total", labels) or 0) >= 1


async def test_when_every_tenant_is_bad_the_service_still_halts(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare(fresh_database)
    async with (
        producer(kafka_bootstrap) as upstream,
        mapping(kafka_bootstrap, topic_names, fresh_database) as (running, _),
    ):
        poison = [partner(t, n, TOO_LONG) for n in range(150) for t in (TENANT, OTHER)]
        await send(upstream, topic_names, poison)
        halted = await asyncio.wait_for(running.halt.wait(), timeout=60)
    # The breaker tripped on the rejections the quarantine left to it (the pair not quarantined).
    assert "events invalid" in halted.reason or "invalid events in a row" in halted.reason
    assert "STRING_TOO_LONG" in halted.reason


async def test_producer_fields_are_checked_at_intake(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare(fresh_database)
    wrong_tenant = partner(TENANT, 1)
    wrong_side = partner(TENANT, 2)
    wrong_side.origin_side = record_changed_pb2.SIDE_CRM
    future = partner(TENANT, 3)
    future.origin_commit_time.FromDatetime(datetime.now(UTC) + timedelta(days=365))
    forged_echo = partner(TENANT, 4, client=CLIENT)
    fine = partner(TENANT, 5)
    names = topic_names
    async with producer(kafka_bootstrap) as upstream:
        # A record keyed for beta whose payload says acme; then what a tenant's producer may get wrong.
        await publish(upstream, names, Topic.APP_CHANGES, wrong_tenant, record_key(OTHER, "partners", "acme-1"))
        await upstream.publish(b"\x08\x96\x01garbage", names(Topic.APP_CHANGES), key=b"acme/partners/acme-9")
        await send(upstream, names, [wrong_side, future, forged_echo, fine])
        async with (
            mapping(kafka_bootstrap, names, fresh_database) as (running, telemetry),
            TopicReader(kafka_bootstrap, names(Topic.MAPPED_CHANGES)) as mapped,
            TopicReader(kafka_bootstrap, names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq,
        ):
            events = decode(await mapped.until(3), ChangeMapped)
            dead = await dlq.until(3)
            assert running.halt.error is None

    why = sorted(reasons(dead))
    assert why[:2] == [
        "INVALID_CHANGE: a crm change on the topic of app changes",
        "INVALID_CHANGE: payload tenant 'acme' does not match key tenant 'beta'",
    ]
    assert why[2].startswith("not a valid duplex.change.v1.RecordChanged")
    by_source = {e.source_event_id: e for e in events}
    assert set(by_source) == {"acme-3", "acme-4", "acme-5"}
    clamped = by_source["acme-3"].origin_commit_time.ToDatetime(tzinfo=UTC)
    assert clamped < datetime.now(UTC) + timedelta(minutes=1)
    assert by_source["acme-4"].origin_client == ""
    corrected = sorted(r["message"].split(" ", 1)[0] for r in await sync_log(fresh_database, "change.corrected"))
    assert corrected == ["origin_client", "origin_commit_time"]
    registry = telemetry.metrics.registry
    for field in ("origin_commit_time", "origin_client"):
        labels = {"service": "mapping", "tenant": TENANT, "field": field}
        assert registry.get_sample_value("duplex_producer_fields_corrected_total", labels) == 1


async def test_a_change_whose_mapped_event_is_too_large_for_a_record_is_refused_alone(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare(fresh_database)
    # A ChangeMapped carries each field's value on both sides: 40,000 characters in become 80,000 out.
    huge = record_changed(
        Side.APP,
        "partners",
        "acme-1",
        {"name": "Acme", "phone": "5" * 40_000},
        event_id="acme-1",
        kind=ChangeKind.CREATE,
    )
    async with (
        producer(kafka_bootstrap) as upstream,
        mapping(kafka_bootstrap, topic_names, fresh_database, max_request_size=64 * 1024) as (running, _),
        TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped,
        TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq,
    ):
        await send(upstream, topic_names, [partner(TENANT, 0), huge, partner(TENANT, 2), partner(OTHER, 3)])
        events = decode(await mapped.until(3), ChangeMapped)
        (dead,) = await dlq.until(1)
        assert running.halt.error is None

    assert sorted(e.source_event_id for e in events) == ["acme-0", "acme-2", "beta-3"]
    (why,) = reasons([dead])
    assert why.startswith("RECORD_TOO_LARGE: the mapped change of link ")
    assert "over the 65,536-byte limit of a Kafka record (KAFKA_MAX_REQUEST_SIZE" in why
    (row,) = await sync_log(fresh_database, "change.rejected")
    assert (row["tenant_id"], row["code"], row["record_id"]) == (TENANT, "RECORD_TOO_LARGE", "acme-1")

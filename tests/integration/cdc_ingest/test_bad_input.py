"""Bad input never stops cdc-ingest's stream: an undecodable change event and a change too large for
a Kafka record are each refused alone, and the changes around them go on.

Against the emulator's ``events/corrupt`` fault (a valid schema id and header, then a union branch
that does not exist: fastavro's IndexError, which once sent the stream into an endless reconnect
from its checkpoint), real Kafka and PostgreSQL. (The same paths without I/O:
tests/unit/cdc_ingest/test_pubsub_flow.py, test_undecodable.py, test_too_large.py.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry

from services.common.topics import Topic
from tests.fixtures.telemetry import local_telemetry
from tests.integration.cdc_ingest.harness import (
    ChangeReader,
    Harness,
    Org,
    Tenant,
    checkpoint_of,
    in_thread,
    sync_log,
    wait_backfilled,
)

# Kafka's default is 1 MiB; a small limit lets an ordinary text field exceed it.
SMALL_LIMIT = 4096


@dataclass
class DeadLetters:
    """The tenant's records on crm-changes' dead-letter topic, by their headers."""

    consumer: AIOKafkaConsumer
    tenant_id: str
    records: list[ConsumerRecord[Any, Any]] = field(default_factory=list)

    def headers(self) -> list[dict[str, str]]:
        return [{k: v.decode() for k, v in record.headers} for record in self.records]

    async def read(self) -> None:
        """Everything on the topic now (its sync-log row is written only once a dead letter is acked)."""
        partitions = list(self.consumer.assignment())
        assert partitions, "the dead-letter topic's partitions are not assigned"
        end = await self.consumer.end_offsets(partitions)
        while [tp for tp in partitions if await self.consumer.position(tp) < end[tp]]:
            for records in (await self.consumer.getmany(timeout_ms=500)).values():
                self.records += [r for r in records if ("duplex-tenant", self.tenant_id.encode()) in r.headers]


@contextlib.asynccontextmanager
async def dead_letters(cdc: Harness, tenant: Tenant) -> AsyncIterator[DeadLetters]:
    consumer = AIOKafkaConsumer(
        cdc.topic_names(Topic.CRM_CHANGES_DLQ),
        bootstrap_servers=cdc.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        yield DeadLetters(consumer, tenant.id)
    finally:
        await consumer.stop()


def samples(registry: CollectorRegistry, name: str, tenant: Tenant) -> dict[str, float]:
    """A per-tenant counter's values by its other label."""
    return {
        next(v for k, v in sample.labels.items() if k != "tenant"): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == name and sample.labels.get("tenant") == tenant.id
    }


async def create_account(org: Org, name: str, **fields: str) -> str:
    record_id: str = (await in_thread(org.salesforce().Account.create, {"Name": name, **fields}))["id"]
    return record_id


async def arrives(reader: ChangeReader, record_id: str) -> None:
    await reader.until(lambda _: bool(reader.of(record_id)))


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_an_undecodable_event_among_good_ones_is_dead_lettered_checkpointed_past_and_never_met_again(
    cdc: Harness,
) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    first = local_telemetry("cdc-ingest")
    async with cdc.reader() as reader, dead_letters(cdc, tenant) as dlq:
        async with cdc.running(tenant, telemetry=first):
            await wait_backfilled(cdc.dsn, tenant.id, 1)
            before = await create_account(org, "Before the corrupt event")
            await arrives(reader, before)
            injected = org.admin("POST", "/events/corrupt", {"entity": "Account"})
            after = await create_account(org, "After the corrupt event")
            # Events are handled in replay order: the one after it arriving means the stream went past it.
            await arrives(reader, after)
            rejected = [r for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "cdc.undecodable"]
            assert await checkpoint_of(cdc.dsn, tenant.id) > int(injected["replay_id"], 16)
            assert samples(first.registry, "duplex_cdc_reconnects_total", tenant) == {}
            assert samples(first.registry, "duplex_cdc_events_rejected_total", tenant) == {"undecodable": 1}

        [row] = rejected
        assert (row["code"], row["service"]) == ("UNDECODABLE_EVENT", "cdc-ingest")
        assert row["detail"] == row["detail"] | {
            "replay_id": injected["replay_id"],
            "schema_id": injected["schema_id"],
            "channel": "/data/ChangeEvents",
            "stage": "payload",
            "error_type": "IndexError",
        }
        await dlq.read()
        [letter] = dlq.headers()
        assert letter["duplex-original-replay-id"] == injected["replay_id"]
        assert letter["duplex-original-schema-id"] == injected["schema_id"]
        assert letter["duplex-service"] == "cdc-ingest"
        assert dlq.records[0].value

        # A restart resumes after the checkpoint: the corrupt event is not met, dead-lettered or logged again.
        second = local_telemetry("cdc-ingest")
        async with cdc.running(tenant, telemetry=second):
            restarted = await create_account(org, "After the restart")
            await arrives(reader, restarted)
            assert samples(second.registry, "duplex_cdc_reconnects_total", tenant) == {}
            assert samples(second.registry, "duplex_cdc_events_rejected_total", tenant) == {}
        await dlq.read()
        assert len(dlq.records) == 1
        assert [r for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "cdc.undecodable"] == rejected
    for record_id in (before, after, restarted):
        assert len(reader.of(record_id)) == 1


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_change_too_large_for_a_kafka_record_is_refused_for_that_record_and_the_stream_goes_on(
    cdc: Harness,
) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    settings = cdc.settings()
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_request_size": SMALL_LIMIT})}
    )
    telemetry = local_telemetry("cdc-ingest")
    async with (
        cdc.reader() as reader,
        dead_letters(cdc, tenant) as dlq,
        cdc.running(tenant, settings, telemetry=telemetry),
    ):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        big = await create_account(org, "Too large", Description="x" * (2 * SMALL_LIMIT))
        small = await create_account(org, "Fits")
        await arrives(reader, small)
        rows = [r for r in await sync_log(cdc.dsn, tenant.id) if r["code"] == "RECORD_TOO_LARGE"]
        assert samples(telemetry.registry, "duplex_cdc_reconnects_total", tenant) == {}
        assert samples(telemetry.registry, "duplex_cdc_events_rejected_total", tenant) == {"too_large": 1}
        await dlq.read()

    assert reader.of(big) == []
    [row] = rows
    assert (row["event"], row["record_id"], row["tenant_id"]) == ("cdc.record_too_large", big, tenant.id)
    assert row["detail"]["object"] == "Account"
    assert row["detail"]["limit"] == SMALL_LIMIT
    assert row["detail"]["size"] > SMALL_LIMIT
    assert f"{SMALL_LIMIT} bytes" in row["message"]
    [letter] = dlq.headers()
    assert (letter["duplex-original-record-id"], letter["duplex-original-object"]) == (big, "Account")
    assert dlq.records[0].value == b""

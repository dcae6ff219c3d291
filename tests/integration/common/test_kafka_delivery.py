"""The shared Kafka library against a real broker: decoding, redelivery, dead letters, the breaker.

Every event of a test goes to partition 0 of its topic, so offsets are predictable; committed
offsets are read back from the broker with an admin client, as an operator would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from duplex.change.v1 import record_changed_pb2
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.params import NoCast

from services.common.codec import MESSAGE_TYPE_HEADER, record_key
from services.common.dlq import (
    ERROR_CLASS,
    ERROR_REASON,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    SERVICE,
    DlqLimit,
)
from services.common.errors import InvalidEvent, RetryableError
from services.common.kafka import AFTER_EFFECTS, Batch, ServiceKafka, consuming, make_broker, make_kafka
from services.common.retry import RetryPolicy
from services.common.service import EXIT_HALTED, serve
from services.common.settings import KafkaSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RecordChanged = record_changed_pb2.RecordChanged
SERVICE_NAME = "mapping"
# Quick redeliveries keep each test short; the policy under test is the same code path.
QUICK = RetryPolicy(base_delay=0.05, max_delay=0.2, max_attempts=None, jitter=False)
KEY = record_key("acme", "Account", "001")


def change(n: int) -> record_changed_pb2.RecordChanged:
    return RecordChanged(event_id=f"evt-{n}", tenant_id="acme", object_type="Account", record_id="001")


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(15):
        # Handlers only append to lists; polling them keeps each test's handler a plain function.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def eventually_committed(bootstrap: str, group: str, topic: str, expected: int) -> None:
    deadline = time.monotonic() + 10
    while (found := await committed(bootstrap, group, topic)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"committed offset {found}, expected {expected}")
        await asyncio.sleep(0.1)


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset on partition 0 of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[TopicPartition(topic, 0)])
    finally:
        await admin.close()
    found = offsets.get(TopicPartition(topic, 0))
    return None if found is None or found.offset < 0 else int(found.offset)


async def read_topic(
    bootstrap: str, topic: str, *, partition_count: int, at_least: int, settle: float = 0.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` once ``at_least`` arrived (and ``settle`` seconds passed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partition_count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[Any, Any]] = []
        deadline = time.monotonic() + 15
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for rs in batch.values() for r in rs)
            if len(records) >= at_least:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    return records
        raise AssertionError(f"{topic}: {len(records)} records, expected at least {at_least}")
    finally:
        await consumer.stop()


@asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[KafkaBroker]:
    """Another service's broker, publishing with the same codec."""
    broker = make_broker(KafkaSettings(bootstrap_servers=bootstrap), service_name="upstream")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def service(bootstrap: str, names: TopicNames, **options: Any) -> ServiceKafka:
    options.setdefault("redelivery", QUICK)
    return make_kafka(
        KafkaSettings(bootstrap_servers=bootstrap), service_name=SERVICE_NAME, topic_names=names, **options
    )


Handler = Callable[[RecordChanged, KafkaMessage], Awaitable[None]]


def consume(kafka: ServiceKafka, handler: Handler) -> None:
    @kafka.subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def on_change(event: NoCast[RecordChanged], msg: KafkaMessage) -> None:
        await handler(event, msg)


def offset_of(msg: KafkaMessage) -> int:
    raw = msg.raw_message
    assert not isinstance(raw, tuple)
    return int(raw.offset)


async def test_an_event_published_with_the_shared_codec_arrives_decoded(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    received: list[tuple[RecordChanged, bytes | None, str | None]] = []

    async def handle(event: RecordChanged, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        received.append((event, raw.key, msg.headers.get(MESSAGE_TYPE_HEADER)))

    telemetry = setup_telemetry(TelemetrySettings(), service_name=SERVICE_NAME, install_global=False)
    kafka = service(kafka_bootstrap, topic_names, telemetry=telemetry)
    consume(kafka, handle)
    sent = change(1)
    sent.fields["Name"].string_value = "Acme Ltd"
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(sent, source, key=KEY, partition=0)
        await kafka.broker.start()
        try:
            await until(lambda: len(received) == 1)
        finally:
            await kafka.broker.stop()

    assert received == [(sent, KEY, "duplex.change.v1.RecordChanged")]
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 1)
    labels = {"service": SERVICE_NAME, "topic": source}
    registry = telemetry.registry
    assert registry.get_sample_value("duplex_events_total", labels | {"tenant": "acme", "outcome": "processed"}) == 1
    assert registry.get_sample_value("duplex_consumer_lag_messages", labels | {"partition": "0"}) == 0


async def test_a_failed_event_comes_again_in_the_same_process_and_is_committed_only_after(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    deliveries: list[tuple[str, int]] = []

    async def handle(event: RecordChanged, msg: KafkaMessage) -> None:
        deliveries.append((event.event_id, offset_of(msg)))
        if len(deliveries) <= 2:
            raise RetryableError("database briefly unavailable")

    kafka = service(kafka_bootstrap, topic_names)
    consume(kafka, handle)
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(change(1), source, key=KEY, partition=0)
        await upstream.publish(change(2), source, key=KEY, partition=0)
        await kafka.broker.start()
        try:
            await until(lambda: len(deliveries) == 4)
        finally:
            await kafka.broker.stop()

    assert deliveries == [("evt-1", 0), ("evt-1", 0), ("evt-1", 0), ("evt-2", 1)]
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 2)


async def test_an_event_never_finished_is_delivered_to_the_next_consumer_of_the_group(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    first: list[int] = []
    second: list[tuple[str, int]] = []

    async def failing(event: RecordChanged, msg: KafkaMessage) -> None:
        first.append(offset_of(msg))
        raise RetryableError("writer down")

    async def working(event: RecordChanged, msg: KafkaMessage) -> None:
        second.append((event.event_id, offset_of(msg)))

    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(change(1), source, key=KEY, partition=0)
        before = service(kafka_bootstrap, topic_names)
        consume(before, failing)
        await before.broker.start()
        try:
            await until(lambda: len(first) >= 2)
        finally:
            await before.broker.stop()
        assert set(first) == {0}
        assert await committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source) is None

        after = service(kafka_bootstrap, topic_names)
        consume(after, working)
        await after.broker.start()
        try:
            await until(lambda: len(second) == 1)
            await upstream.publish(change(2), source, key=KEY, partition=0)
            await until(lambda: len(second) == 2)
        finally:
            await after.broker.stop()

    assert second == [("evt-1", 0), ("evt-2", 1)]
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 2)


async def test_an_undecodable_event_goes_to_the_dead_letter_topic_and_the_next_one_is_processed(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    dlq = topic_names(Topic.CRM_CHANGES_DLQ)
    dlq_partitions = topic_names.table.topics[Topic.CRM_CHANGES_DLQ].partitions
    processed: list[tuple[str, int]] = []

    async def handle(event: RecordChanged, msg: KafkaMessage) -> None:
        processed.append((event.event_id, offset_of(msg)))

    kafka = service(kafka_bootstrap, topic_names)
    consume(kafka, handle)
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(b"\x08\x96\x01garbage", source, key=KEY, partition=0, headers={"trace": "t-1"})
        await upstream.publish(change(2), source, key=KEY, partition=0)
        await kafka.broker.start()
        try:
            await until(lambda: len(processed) == 1)
        finally:
            await kafka.broker.stop()

    assert processed == [("evt-2", 1)]
    (dead,) = await read_topic(kafka_bootstrap, dlq, partition_count=dlq_partitions, at_least=1)
    headers = {name: value.decode() for name, value in dead.headers}
    assert (dead.key, dead.value) == (KEY, b"\x08\x96\x01garbage")
    assert headers[ORIGINAL_TOPIC] == source
    assert headers[ORIGINAL_PARTITION] == "0"
    assert headers[ORIGINAL_OFFSET] == "0"
    assert headers[ERROR_REASON].startswith("not a valid duplex.change.v1.RecordChanged")
    assert headers[ERROR_CLASS] == "services.common.errors.InvalidEvent"
    assert headers[SERVICE] == SERVICE_NAME
    assert headers["trace"] == "t-1"
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 2)


async def test_the_breaker_halts_a_consumer_fed_mostly_garbage_without_draining_it(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    dlq = topic_names(Topic.CRM_CHANGES_DLQ)
    dlq_partitions = topic_names.table.topics[Topic.CRM_CHANGES_DLQ].partitions
    processed: list[int] = []

    async def handle(event: RecordChanged, msg: KafkaMessage) -> None:
        processed.append(offset_of(msg))

    limit = DlqLimit(max_invalid_ratio=0.5, max_consecutive_invalid=100, window=10, min_samples=4)
    kafka = service(kafka_bootstrap, topic_names, dlq_limit=limit)
    consume(kafka, handle)
    async with producer(kafka_bootstrap) as upstream:
        # Offsets 0-1 valid; 2-3 garbage pass (2 of 4 is not above half); 4 would make 3 of 5.
        await upstream.publish(change(0), source, key=KEY, partition=0)
        await upstream.publish(change(1), source, key=KEY, partition=0)
        for _ in range(10):
            await upstream.publish(b"\xff not protobuf", source, key=KEY, partition=0)
        await upstream.publish(change(99), source, key=KEY, partition=0)

        status = await asyncio.wait_for(serve(consuming(kafka)), timeout=30)

    assert status == EXIT_HALTED
    assert kafka.halt.error is not None
    assert "3 of the last 5 events invalid" in kafka.halt.error.reason
    assert processed == [0, 1]
    dead = await read_topic(kafka_bootstrap, dlq, partition_count=dlq_partitions, at_least=2, settle=1.0)
    assert sorted(int(dict(r.headers)[ORIGINAL_OFFSET]) for r in dead) == [2, 3]
    # The event that tripped the breaker, and everything after it, is still there for after the fix.
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 4)


async def test_a_batchs_dead_letters_keep_each_source_partitions_order_in_the_dlq(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    """A batch's letters go out as record batches per dead-letter partition: each lands in its
    source partition modulo the DLQ's partitions, in its source order, key, value and headers kept
    (values big enough to fill several record batches)."""
    source = topic_names(Topic.CRM_CHANGES)
    dlq = topic_names(Topic.CRM_CHANGES_DLQ)
    dlq_partitions = topic_names.table.topics[Topic.CRM_CHANGES_DLQ].partitions
    partitions = topic_names.table.topics[Topic.CRM_CHANGES].partitions
    per_partition = 8
    padding = "x" * 3000  # about five letters to a 16 KiB record batch
    refused: list[int] = []

    async def refuse_all(events: Batch[RecordChanged]) -> Mapping[int, InvalidEvent]:
        refused.extend(range(len(events)))
        return {index: InvalidEvent(f"refused {event.event_id}") for index, event in enumerate(events)}

    kafka = service(kafka_bootstrap, topic_names)
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=refuse_all)
    async with producer(kafka_bootstrap) as upstream:
        for n in range(per_partition):
            for partition in range(partitions):
                event = RecordChanged(event_id=f"{partition}-{n}", tenant_id="acme", record_id=padding)
                await upstream.publish(event, source, key=f"acme/Account/{partition}".encode(), partition=partition)
        async with consuming(kafka):
            await until(lambda: len(refused) == per_partition * partitions)
            letters = await read_topic(
                kafka_bootstrap, dlq, partition_count=dlq_partitions, at_least=per_partition * partitions
            )

    assert len(letters) == per_partition * partitions
    by_source: dict[int, list[tuple[int, int]]] = {}
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        origin = int(headers[ORIGINAL_PARTITION])
        assert letter.partition == origin % dlq_partitions
        assert letter.key == f"acme/Account/{origin}".encode()
        assert headers[ERROR_REASON] == f"refused {RecordChanged.FromString(letter.value).event_id}"
        by_source.setdefault(origin, []).append((letter.offset, int(headers[ORIGINAL_OFFSET])))
    assert sorted(by_source) == list(range(partitions))
    for origin, placed in by_source.items():
        assert [offset for _, offset in sorted(placed)] == list(range(per_partition)), origin


async def test_a_senders_records_go_where_kafkas_default_partitioner_puts_their_keys_in_order(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    """Sender builds its own record batches: each key still lands in the partition any Kafka
    client would pick for it, one key's events in the order given, over several record batches."""
    topic = topic_names(Topic.CRM_CHANGES)
    partitions = topic_names.table.topics[Topic.CRM_CHANGES].partitions
    keys = [record_key("acme", "Account", f"001{n:03d}") for n in range(40)]
    padding = "x" * 2000  # several record batches per partition
    events = [
        (RecordChanged(event_id=f"{key.decode()}#{n}", tenant_id="acme", record_id=padding), key)
        for n in range(5)
        for key in keys
    ]
    kafka = service(kafka_bootstrap, topic_names)
    async with consuming(kafka):
        await kafka.sender(Topic.CRM_CHANGES).publish_all(events)
    records = await read_topic(kafka_bootstrap, topic, partition_count=partitions, at_least=len(events))

    every = list(range(partitions))
    default = DefaultPartitioner()
    seen: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == default(record.key, every, every)
        event_id = RecordChanged.FromString(record.value).event_id
        seen.setdefault(record.key, []).append(int(event_id.rpartition("#")[2]))
    assert seen == {key: list(range(5)) for key in keys}

"""The batch subscriber the mapping and the resolver run on, against the real broker: a failed batch
comes again after a backoff and is committed only after; refused and undecodable records are
dead-lettered one by one while the rest of the batch is committed; a halted consumer commits nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.codec import CONTENT_TYPE, MESSAGE_TYPE_HEADER
from services.common.dlq import ERROR_REASON, ORIGINAL_OFFSET, DlqLimit
from services.common.errors import InvalidEvent, RetryableError
from services.common.kafka import ServiceKafka
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames
from tests.integration.common.test_kafka_delivery import (
    KEY,
    SERVICE_NAME,
    change,
    committed,
    eventually_committed,
    producer,
    read_topic,
    service,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RecordChanged = record_changed_pb2.RecordChanged
ChangeMapped = change_mapped_pb2.ChangeMapped


class Sleeps:
    """The guard's sleep, recorded (and kept short)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.01)


async def publish_all(bootstrap: str, topic: str, count: int, *, garbage_at: int | None = None) -> None:
    async with producer(bootstrap) as upstream:
        for n in range(count):
            if n == garbage_at:
                await upstream.publish(b"\xff\xff not protobuf", topic, key=KEY, partition=0)
            else:
                await upstream.publish(change(n), topic, key=KEY, partition=0)


async def run(kafka: ServiceKafka, condition: Callable[[], bool]) -> None:
    await kafka.broker.start()
    try:
        await until(condition)
    finally:
        await kafka.broker.stop()


async def test_a_failed_batch_comes_again_after_a_backoff_and_is_committed_only_after(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    seen: list[list[str]] = []

    async def handle(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        seen.append([e.event_id for e in events])
        if len(seen) == 1:
            raise RetryableError("database briefly unavailable")
        return {}

    sleeps = Sleeps()
    kafka = service(kafka_bootstrap, topic_names, sleep=sleeps)
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=handle)
    await publish_all(kafka_bootstrap, source, 5)
    await run(kafka, lambda: sum(map(len, seen)) >= 10)

    # Everything of the failed batch came again, in order; one backoff in between.
    first = seen[0]
    assert first == [f"evt-{n}" for n in range(len(first))]
    assert [e for batch in seen[1:] for e in batch] == [f"evt-{n}" for n in range(5)]
    assert len(sleeps.delays) == 1
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 5)


async def test_refused_and_undecodable_records_are_dead_lettered_and_the_rest_of_the_batch_committed(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)
    handled: list[str] = []

    async def handle(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        handled.extend(e.event_id for e in events)
        return {i: InvalidEvent("refused by the handler") for i, e in enumerate(events) if e.event_id == "evt-3"}

    kafka = service(kafka_bootstrap, topic_names)
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=handle)
    await publish_all(kafka_bootstrap, source, 6, garbage_at=1)
    await run(kafka, lambda: len(handled) >= 5)

    assert handled == ["evt-0", "evt-2", "evt-3", "evt-4", "evt-5"]
    await eventually_committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source, 6)
    dead = await read_topic(kafka_bootstrap, topic_names(Topic.CRM_CHANGES_DLQ), partition_count=3, at_least=2)
    reasons = {int(dict(r.headers)[ORIGINAL_OFFSET]): dict(r.headers)[ERROR_REASON].decode() for r in dead}
    assert sorted(reasons) == [1, 3]
    assert reasons[3] == "refused by the handler"


async def test_a_batch_that_trips_the_breaker_halts_the_consumer_without_committing(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    source = topic_names(Topic.CRM_CHANGES)

    async def refuse_all(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        return {i: InvalidEvent("bad deploy") for i in range(len(events))}

    kafka = service(kafka_bootstrap, topic_names, dlq_limit=DlqLimit(max_consecutive_invalid=2))
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=refuse_all)
    await publish_all(kafka_bootstrap, source, 4)
    await run(kafka, lambda: kafka.halt.error is not None)

    assert kafka.halt.error is not None
    assert "2 invalid events in a row" in kafka.halt.error.reason
    assert await committed(kafka_bootstrap, topic_names.prefix + SERVICE_NAME, source) is None


async def test_records_sent_from_a_batch_continue_its_trace_and_look_as_if_published_by_faststream(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        TelemetrySettings(),
        service_name=SERVICE_NAME,
        span_exporter=exporter,
        batch_export=False,
        install_global=False,
    )
    kafka = service(kafka_bootstrap, topic_names, telemetry=telemetry)
    sender = kafka.sender(Topic.MAPPED_CHANGES)
    handled: list[str] = []

    async def handle(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        await sender.publish_all([(ChangeMapped(event_id=e.event_id, tenant_id="acme"), KEY) for e in events])
        handled.extend(e.event_id for e in events)
        return {}

    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=handle)
    await publish_all(kafka_bootstrap, topic_names(Topic.CRM_CHANGES), 3)
    await run(kafka, lambda: len(handled) == 3)

    out = await read_topic(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES), partition_count=12, at_least=3)
    assert [ChangeMapped.FromString(r.value).event_id for r in out] == ["evt-0", "evt-1", "evt-2"]
    assert {r.key for r in out} == {KEY}
    headers = [dict(r.headers) for r in out]
    assert {h[MESSAGE_TYPE_HEADER] for h in headers} == {b"duplex.mapping.v1.ChangeMapped"}
    assert {h["content-type"] for h in headers} == {CONTENT_TYPE.encode()}
    processing = {
        format(span.context.trace_id, "032x") for span in exporter.get_finished_spans() if span.name.endswith("process")
    }
    assert {h["traceparent"].decode().split("-")[1] for h in headers} <= processing

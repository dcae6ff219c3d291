"""Dead-lettering, the breaker in front of it and redelivery, wired through the broker middleware.

Handlers run on faststream's in-memory TestKafkaBroker; the guard's sleep is recorded, not slept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from duplex.change.v1 import record_changed_pb2
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.params import NoCast
from prometheus_client import CollectorRegistry

from services.common.codec import encode_event, record_key
from services.common.dlq import (
    ERROR_CLASS,
    ERROR_REASON,
    FAILED_AT,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_TOPIC,
    SERVICE,
    DeadLetter,
    DeadLetterPublisher,
    DlqLimit,
    dead_letter_headers,
)
from services.common.errors import ConsumerHalted, InvalidEvent, RetryableError
from services.common.kafka import AFTER_EFFECTS, ServiceKafka, make_kafka
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy
from services.common.settings import KafkaSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.unit

RecordChanged = record_changed_pb2.RecordChanged
NAMES = TopicNames(load_topic_table(), prefix="unit.")
SOURCE = NAMES(Topic.CRM_CHANGES)
DLQ = NAMES(Topic.CRM_CHANGES_DLQ)
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # never connected: TestKafkaBroker


def change(n: int) -> record_changed_pb2.RecordChanged:
    return RecordChanged(event_id=f"evt-{n}", tenant_id="acme", object_type="Account", record_id=f"001{n}")


@dataclass
class Harness:
    kafka: ServiceKafka
    metrics: Metrics
    handled: list[str] = field(default_factory=list)
    dead: list[tuple[bytes, dict[str, str], bytes | None]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    fail_with: list[BaseException] = field(default_factory=list)

    async def publish(self, broker: Any, value: Any, key: bytes = b"acme/Account/1") -> None:
        await broker.publish(value, SOURCE, key=key)


def build(limit: DlqLimit, redelivery: RetryPolicy | None = None) -> Harness:
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", install_global=False, registry=CollectorRegistry()
    )
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    kafka = make_kafka(
        SETTINGS,
        service_name="mapping",
        topic_names=NAMES,
        telemetry=telemetry,
        dlq_limit=limit,
        redelivery=redelivery or RetryPolicy(base_delay=1.0, max_delay=4.0, max_attempts=5, jitter=False),
        sleep=sleep,
    )
    harness = Harness(kafka, telemetry.metrics, sleeps=sleeps)

    @kafka.subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def on_change(event: NoCast[RecordChanged]) -> None:
        if harness.fail_with:
            raise harness.fail_with.pop(0)
        if event.object_type == "Refused":
            raise InvalidEvent("object type not mapped")
        harness.handled.append(event.event_id)

    @kafka.broker.subscriber(DLQ, group_id="dlq-reader", ack_policy=AFTER_EFFECTS)
    async def on_dead_letter(body: bytes, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        harness.dead.append((body, dict(msg.headers), raw.key))

    return harness


@pytest.fixture
async def lenient() -> AsyncIterator[tuple[Harness, Any]]:
    harness = build(DlqLimit(max_invalid_ratio=1.0, max_consecutive_invalid=3, window=10, min_samples=1))
    async with TestKafkaBroker(harness.kafka.broker) as broker:
        yield harness, broker


def sample(harness: Harness, name: str, **labels: str) -> float:
    value = harness.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_dead_letter_headers_name_origin_and_reason() -> None:
    headers = dead_letter_headers(
        original_headers=[("traceparent", b"00-abc-def-01"), ("duplex-error-reason", b"older failure")],
        topic=SOURCE,
        partition=7,
        offset=1234,
        timestamp_ms=1_700_000_000_000,
        error=InvalidEvent("bad bytes"),
        service="mapping",
        failed_at=datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC),
    )
    assert headers == {
        "traceparent": "00-abc-def-01",
        ORIGINAL_TOPIC: SOURCE,
        ORIGINAL_PARTITION: "7",
        ORIGINAL_OFFSET: "1234",
        ORIGINAL_TIMESTAMP: "1700000000000",
        ERROR_REASON: "bad bytes",
        ERROR_CLASS: "services.common.errors.InvalidEvent",
        FAILED_AT: "2030-01-02T03:04:05.600+00:00",
        SERVICE: "mapping",
    }


async def test_dead_letter_publisher_keeps_key_value_and_headers() -> None:
    sent: list[DeadLetter] = []

    async def publish(letters: Sequence[DeadLetter]) -> None:
        sent.extend(letters)

    publisher = DeadLetterPublisher(
        publish, NAMES, service_name="mapping", clock=lambda: datetime(2030, 1, 1, tzinfo=UTC)
    )
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        SOURCE, 3, 42, 1_700_000_000_000, 0, b"acme/Account/1", b"\x00bad", None, 14, 4, [("h", b"v")]
    )
    assert await publisher.publish(record, InvalidEvent("nope")) == DLQ
    ((letter),) = sent
    assert (letter.value, letter.topic, letter.key, letter.partition) == (b"\x00bad", DLQ, b"acme/Account/1", 3)
    headers = letter.headers
    assert headers["h"] == "v"
    assert headers[ORIGINAL_PARTITION] == "3"
    assert headers[ORIGINAL_OFFSET] == "42"
    assert publisher.dead_letter_topic(NAMES(Topic.TENANTS)) is None
    assert publisher.dead_letter_topic("not.ours") is None


async def test_undecodable_event_is_dead_lettered_and_the_next_one_processed(
    lenient: tuple[Harness, Any],
) -> None:
    harness, broker = lenient
    await harness.publish(broker, b"\xde\xad\xbe\xef", key=b"acme/Account/9")
    await harness.publish(broker, change(1))
    ((body, headers, key),) = harness.dead
    assert (body, key) == (b"\xde\xad\xbe\xef", b"acme/Account/9")
    assert headers[ORIGINAL_TOPIC] == SOURCE
    assert headers[ORIGINAL_PARTITION] == "0"
    assert headers[ORIGINAL_OFFSET] == "0"
    assert "not a valid duplex.change.v1.RecordChanged" in headers[ERROR_REASON]
    assert headers[SERVICE] == "mapping"
    assert harness.handled == ["evt-1"]
    labels = {"service": "mapping", "topic": SOURCE}
    assert sample(harness, "duplex_dlq_messages_total", **labels, error_class="InvalidEvent") == 1
    assert sample(harness, "duplex_events_total", **labels, tenant="acme", outcome="processed") == 1
    assert sample(harness, "duplex_events_total", **labels, tenant="unknown", outcome="dead_lettered") == 1


async def test_a_handler_refusal_is_dead_lettered_like_a_decode_failure(lenient: tuple[Harness, Any]) -> None:
    harness, broker = lenient
    refused = change(2)
    refused.object_type = "Refused"
    await harness.publish(broker, refused)
    ((body, headers, _),) = harness.dead
    assert body == encode_event(refused)
    assert headers[ERROR_REASON] == "object type not mapped"
    assert headers["duplex-message-type"] == "duplex.change.v1.RecordChanged"


async def test_the_breaker_halts_instead_of_draining_the_topic(lenient: tuple[Harness, Any]) -> None:
    harness, broker = lenient
    for _ in range(3):
        await harness.publish(broker, b"garbage")
    with pytest.raises(ConsumerHalted, match="more than 3 invalid events in a row"):
        await harness.publish(broker, b"garbage")
    assert len(harness.dead) == 3
    assert harness.kafka.halt.error is not None
    # Nothing more is processed, valid or not, once halted.
    with pytest.raises(ConsumerHalted):
        await harness.publish(broker, change(3))
    assert harness.handled == []
    assert len(harness.dead) == 3
    labels = {"service": "mapping", "topic": SOURCE}
    assert sample(harness, "duplex_circuit_breaker_trips_total", **labels, cause="breaker") == 1


async def test_valid_events_keep_the_breaker_closed(lenient: tuple[Harness, Any]) -> None:
    harness, broker = lenient
    for n in range(10):
        for _ in range(3):
            await harness.publish(broker, b"garbage")
        await harness.publish(broker, change(n))
    assert len(harness.dead) == 30
    assert len(harness.handled) == 10
    assert harness.kafka.halt.error is None


async def test_failures_are_redelivered_after_a_growing_pause_then_halt(lenient: tuple[Harness, Any]) -> None:
    harness, broker = lenient
    harness.fail_with = [RetryableError("db timeout")] * 10
    for _ in range(4):
        with pytest.raises(RetryableError):
            await harness.publish(broker, change(1))
    assert harness.sleeps == [1.0, 2.0, 4.0, 4.0]
    with pytest.raises(ConsumerHalted, match="gave up after 5 attempts: RetryableError: db timeout"):
        await harness.publish(broker, change(1))
    assert harness.dead == []
    assert harness.handled == []
    assert sample(harness, "duplex_redeliveries_total", service="mapping", topic=SOURCE) == 4


async def test_success_resets_the_redelivery_count(lenient: tuple[Harness, Any]) -> None:
    harness, broker = lenient
    harness.fail_with = [RuntimeError("bug"), RuntimeError("bug")]
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await harness.publish(broker, change(1))
    await harness.publish(broker, change(1))
    harness.fail_with = [RuntimeError("bug")]
    with pytest.raises(RuntimeError):
        await harness.publish(broker, change(2))
    assert harness.sleeps == [1.0, 2.0, 1.0]
    assert harness.handled == ["evt-1"]


async def test_invalid_events_on_a_topic_without_dead_letter_topic_halt() -> None:
    harness = build(DlqLimit(max_consecutive_invalid=50, min_samples=1, window=10))

    @harness.kafka.subscriber(Topic.APP_UPDATES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def on_update(event: NoCast[RecordChanged]) -> None:
        raise AssertionError("never decoded")

    async with TestKafkaBroker(harness.kafka.broker) as broker:
        with pytest.raises(ConsumerHalted, match="without a dead-letter topic"):
            await broker.publish(b"garbage", NAMES(Topic.APP_UPDATES), key=record_key("acme", "partners", "1"))

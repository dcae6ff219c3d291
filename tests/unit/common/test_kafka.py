"""The broker and subscriber helpers: commit semantics are explicit and safe by construction."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from aiokafka import ConsumerRecord
from duplex.change.v1 import record_changed_pb2
from faststream import AckPolicy
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.params import NoCast

from services.common.codec import MESSAGE_TYPE_HEADER, record_key
from services.common.dlq import ConsumerGuard, Halt
from services.common.errors import ConsumerHalted, InvalidEvent
from services.common.kafka import AFTER_EFFECTS, Batch, _consume_batch, make_broker, make_kafka
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.unit

RecordChanged = record_changed_pb2.RecordChanged
NAMES = TopicNames(load_topic_table(), prefix="k.")
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9", client_id="duplex")


def test_producer_waits_for_all_replicas_with_idempotence() -> None:
    broker = make_broker(SETTINGS, service_name="writer")
    kwargs = broker._connection_kwargs
    assert kwargs["acks"] == "all"
    assert kwargs["enable_idempotence"] is True
    assert kwargs["client_id"] == "duplex-writer"
    assert broker.config.ack_policy is AckPolicy.NACK_ON_ERROR


def test_subscribers_join_the_service_group_from_the_earliest_event_without_autocommit() -> None:
    kafka = make_kafka(SETTINGS, service_name="mapping", topic_names=NAMES)

    @kafka.subscriber(Topic.APP_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def handle(event: NoCast[RecordChanged]) -> None: ...

    (declared,) = kafka.broker.subscribers
    assert isinstance(declared, DefaultSubscriber)
    subscriber = declared
    # Prefixed like the topics: two deployments on one cluster never share a group.
    assert subscriber.group_id == "k.mapping"
    assert subscriber.topics[0].name == "k.duplex.app-changes.v1"
    assert subscriber.ack_policy is AckPolicy.NACK_ON_ERROR
    assert subscriber._connection_args["enable_auto_commit"] is False
    assert subscriber._connection_args["auto_offset_reset"] == "earliest"


@pytest.mark.parametrize("policy", [AckPolicy.ACK_FIRST, AckPolicy.ACK, AckPolicy.REJECT_ON_ERROR])
def test_policies_that_commit_unprocessed_events_are_refused(policy: AckPolicy) -> None:
    kafka = make_kafka(SETTINGS, service_name="mapping", topic_names=NAMES)
    with pytest.raises(ValueError, match="can commit an event that was not processed"):
        kafka.subscriber(Topic.APP_CHANGES, message_type=RecordChanged, ack_policy=policy)


def test_batch_subscribers_are_not_offered_by_the_guarded_helper() -> None:
    kafka = make_kafka(SETTINGS, service_name="writer", topic_names=NAMES)
    with pytest.raises(ValueError, match="not guarded"):
        kafka.subscriber(Topic.CRM_WRITES, message_type=RecordChanged, ack_policy=AckPolicy.MANUAL, batch=True)


async def test_published_events_arrive_decoded_with_their_key_and_type_header() -> None:
    kafka = make_kafka(SETTINGS, service_name="mapping", topic_names=NAMES)
    out = kafka.publisher(Topic.APP_CHANGES)
    received: list[tuple[RecordChanged, bytes | None, str | None]] = []

    @kafka.subscriber(Topic.APP_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def handle(event: NoCast[RecordChanged], msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        received.append((event, raw.key, msg.headers.get(MESSAGE_TYPE_HEADER)))

    event = RecordChanged(event_id="e1", tenant_id="acme", object_type="partners", record_id="p-1")
    async with TestKafkaBroker(kafka.broker):
        await out.publish(event, key=record_key("acme", "partners", "p-1"))
        handle.mock.assert_called_once()

    assert received == [(event, b"acme/partners/p-1", "duplex.change.v1.RecordChanged")]


def test_halt_keeps_the_first_error_and_tells_late_subscribers() -> None:
    halt = Halt()
    halt.trip(ConsumerHalted("first"))
    halt.trip(ConsumerHalted("second"))
    told: list[str] = []
    halt.on_trip(lambda error: told.append(error.reason))
    assert told == ["first"]


async def test_a_batch_handler_gets_each_decoded_event_with_the_key_it_came_with() -> None:
    def record(offset: int, key: bytes, value: bytes) -> ConsumerRecord[bytes, bytes]:
        headers = [(MESSAGE_TYPE_HEADER, RecordChanged.DESCRIPTOR.full_name.encode())]
        return ConsumerRecord("t", 0, offset, 0, 0, key, value, None, len(key), len(value), headers)

    records = [
        record(0, b"a/Account/1", RecordChanged(event_id="e1", tenant_id="a", record_id="1").SerializeToString()),
        record(1, b"a/Account/x", b"\xff not protobuf"),
        record(2, b"b/Account/2", RecordChanged(event_id="e2", tenant_id="b", record_id="2").SerializeToString()),
    ]
    seen: list[tuple[bytes | None, str]] = []
    rejected: list[int] = []

    async def handler(events: Batch[RecordChanged]) -> dict[int, InvalidEvent]:
        seen.extend(zip(events.keys, (e.record_id for e in events), strict=True))
        return {}

    async def reject(
        record: ConsumerRecord[bytes, bytes], error: InvalidEvent, consumer: object, acks: object = None
    ) -> None:
        rejected.append(record.offset)

    guard = SimpleNamespace(halt=Halt(), succeeded=lambda record, consumer: None, rejected=reject)
    await _consume_batch(cast(ConsumerGuard, guard), records, RecordChanged, handler, None)

    assert seen == [(b"a/Account/1", "1"), (b"b/Account/2", "2")]
    assert rejected == [1]

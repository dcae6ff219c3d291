"""Batch subscribers whose handler commits itself: dead-lettered records held until their dead letter is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from duplex.writer.v1 import write_records_pb2
from faststream import AckPolicy
from faststream.kafka.subscriber.usecase import BatchSubscriber

from services.common.codec import MESSAGE_TYPE_HEADER
from services.common.dlq import ERROR_REASON, ConsumerGuard, DeadLetter, DeadLetterPublisher, DlqLimit, Halt
from services.common.errors import ConsumerHalted, InvalidEvent
from services.common.kafka import AFTER_EFFECTS, Batch, _consume_batch, make_kafka
from services.common.retry import RetryPolicy
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.unit

WriteRecords = write_records_pb2.WriteRecords
NAMES = TopicNames(load_topic_table(), prefix="k.")
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9", client_id="duplex")
TOPIC = NAMES(Topic.CRM_WRITES)


class Offsets:
    """Records the subscriber's holds and releases, in order, with what the handler saw meanwhile."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def hold(self, record: ConsumerRecord[Any, Any]) -> None:
        self.log.append(("hold", record.offset))

    def release(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        self.log.extend(("release", r.offset) for r in records)


class DeadLetters:
    """A dead-letter topic whose acknowledgements the test gives (or fails) itself."""

    def __init__(self, failures: int = 0, *, acknowledged: bool = False) -> None:
        self.failures = failures
        self.acknowledged = acknowledged
        self.sent: list[tuple[int, dict[str, str]]] = []
        self.acks: list[asyncio.Future[None]] = []
        self._sending = asyncio.Condition()

    async def __call__(self, letters: Sequence[DeadLetter]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the dead-letter topic is away")
        acks: list[asyncio.Future[None]] = []
        for letter in letters:
            self.sent.append((int(letter.headers["duplex-original-offset"]), letter.headers))
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self.acknowledged:
                ack.set_result(None)
            acks.append(ack)
        self.acks.extend(acks)
        async with self._sending:
            self._sending.notify_all()
        await asyncio.gather(*acks)

    async def until_sent(self, count: int) -> None:
        async with self._sending:
            await self._sending.wait_for(lambda: len(self.sent) >= count)


def guard_of(dead_letters: DeadLetters, limit: DlqLimit | None = None) -> tuple[ConsumerGuard, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    guard = ConsumerGuard(
        dead_letters=DeadLetterPublisher(dead_letters, NAMES, service_name="writer"),
        service_name="writer",
        limit=limit or DlqLimit(),
        redelivery=RetryPolicy(base_delay=0.01, max_delay=0.01, max_attempts=3),
        halt=Halt(),
        sleep=sleep,
    )
    return guard, slept


def record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    headers = [(MESSAGE_TYPE_HEADER, WriteRecords.DESCRIPTOR.full_name.encode())]
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"acme/l", value, None, 6, len(value), headers)


def good(command_id: str) -> bytes:
    return WriteRecords(command_id=command_id, tenant_id="acme").SerializeToString()


RECORDS = [
    record(0, good("c0")),
    record(1, b"\xff not protobuf"),
    record(2, good("refused")),
    record(3, good("c3")),
]


def refusing_handler(offsets: Offsets, seen: list[str]) -> Any:
    async def handler(events: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        refused: dict[int, InvalidEvent] = {}
        for index, (event, rec) in enumerate(zip(events, events.records, strict=True)):
            if event.command_id == "refused":
                offsets.hold(rec)  # the handler holds what it refuses (module doc)
                refused[index] = InvalidEvent("no crm_object")
            else:
                seen.append(event.command_id)
        return refused

    return handler


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None: ...

    async def on_partitions_assigned(self, assigned: object) -> None: ...


def test_a_subscriber_given_offsets_leaves_every_commit_to_its_owner() -> None:
    kafka = make_kafka(SETTINGS, service_name="writer", topic_names=NAMES)

    async def commits(events: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        return {}

    async def commits_itself(events: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        return {}

    listener = Listener()
    kafka.batch_subscriber(Topic.APP_CHANGES, message_type=WriteRecords, handler=commits)
    kafka.batch_subscriber(
        Topic.CRM_WRITES, message_type=WriteRecords, handler=commits_itself, offsets=Offsets(), listener=listener
    )
    declared = [subscriber for subscriber in kafka.broker.subscribers if isinstance(subscriber, BatchSubscriber)]
    by_topic = {subscriber.topics[0].name: subscriber for subscriber in declared}
    committing, manual = by_topic[NAMES(Topic.APP_CHANGES)], by_topic[TOPIC]
    assert committing.ack_policy is AFTER_EFFECTS
    assert manual.ack_policy is AckPolicy.MANUAL
    assert manual._connection_args["enable_auto_commit"] is False
    assert manual._listener is listener


async def test_rejected_records_are_held_before_the_handler_and_released_only_once_their_dead_letters_are_acked() -> (
    None
):
    dead_letters, offsets, seen = DeadLetters(), Offsets(), list[str]()
    guard, _ = guard_of(dead_letters)
    handler = refusing_handler(offsets, seen)

    batch = asyncio.create_task(_consume_batch(guard, RECORDS, WriteRecords, handler, None, offsets))
    await asyncio.wait_for(dead_letters.until_sent(2), 5)
    # Both dead letters are sent, neither is acknowledged: nothing may be passed yet.
    assert offsets.log == [("hold", 1), ("hold", 2)]
    assert seen == ["c0", "c3"]
    dead_letters.acks[0].set_result(None)
    await asyncio.sleep(0)
    assert not batch.done()
    assert ("release", 1) not in offsets.log
    dead_letters.acks[1].set_result(None)
    await batch

    assert offsets.log == [("hold", 1), ("hold", 2), ("release", 1), ("release", 2)]
    reasons = {offset: headers[ERROR_REASON] for offset, headers in dead_letters.sent}
    assert reasons[2] == "no crm_object"
    assert reasons[1].startswith("not a valid duplex.writer.v1.WriteRecords")


async def test_a_dead_letter_that_cannot_be_sent_is_sent_again_after_a_backoff_and_only_then_released() -> None:
    dead_letters, offsets, seen = DeadLetters(failures=1, acknowledged=True), Offsets(), list[str]()
    guard, slept = guard_of(dead_letters)

    await asyncio.wait_for(
        _consume_batch(guard, RECORDS, WriteRecords, refusing_handler(offsets, seen), None, offsets), 5
    )

    assert slept, "the retry waits the redelivery backoff"
    assert {offset for offset, _ in dead_letters.sent} == {1, 2}
    assert offsets.log[-2:] == [("release", 1), ("release", 2)]


async def test_a_dead_letter_never_sent_halts_the_consumer_with_its_record_held() -> None:
    dead_letters, offsets, seen = DeadLetters(failures=100), Offsets(), list[str]()
    guard, _ = guard_of(dead_letters)

    with pytest.raises(ConsumerHalted, match="gave up"):
        await _consume_batch(guard, RECORDS, WriteRecords, refusing_handler(offsets, seen), None, offsets)
    assert guard.halt.error is not None
    assert [entry for entry in offsets.log if entry[0] == "release"] == []


async def test_past_the_breakers_limit_the_consumer_halts_and_the_record_stays_held() -> None:
    dead_letters, offsets = DeadLetters(acknowledged=True), Offsets()
    guard, _ = guard_of(dead_letters, DlqLimit(max_consecutive_invalid=1))
    records = [record(0, b"\xff"), record(1, b"\xfe")]

    async def acknowledge_all(events: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        return {}

    with pytest.raises(ConsumerHalted, match="in a row"):
        await _consume_batch(guard, records, WriteRecords, acknowledge_all, None, offsets)
    assert offsets.log == [("hold", 0), ("hold", 1)]
    assert guard.halt.error is not None


async def test_a_handler_that_commits_itself_and_fails_halts_the_consumer() -> None:
    dead_letters, offsets = DeadLetters(acknowledged=True), Offsets()
    guard, _ = guard_of(dead_letters)
    paused: list[object] = []
    consumer = type("Consumer", (), {"assignment": lambda self: {"p0"}, "pause": lambda self, *p: paused.extend(p)})()

    async def failing(events: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        raise RuntimeError("a bug")

    # Some of the batch may be with the handler: neither redelivered nor skipped, the consumer stops.
    with pytest.raises(ConsumerHalted, match="batch handler failed: RuntimeError: a bug"):
        await _consume_batch(guard, RECORDS, WriteRecords, failing, consumer, offsets)
    assert guard.halt.error is not None
    assert paused == ["p0"]
    assert dead_letters.sent == []

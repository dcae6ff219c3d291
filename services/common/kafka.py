"""Kafka for Duplex services: one way to build the broker, declare subscribers and run.

Commit protocol
===============
Every subscriber states its commit semantics (:func:`ServiceKafka.subscriber` has no default).
Our default, :data:`AFTER_EFFECTS` (faststream's ``AckPolicy.NACK_ON_ERROR``), gives
at-least-once delivery with nothing lost. For one record ``r`` at offset ``o`` of partition ``p``:

1. ``getone()`` hands ``r`` to the subscriber; Kafka auto-commit is off (faststream turns it off
   for every policy but ``ACK_FIRST``, which :func:`ServiceKafka.subscriber` refuses).
2. Middlewares open, outermost first: faststream's acknowledgement and error logging, tracing
   (the trace context is extracted from ``r``'s headers), Prometheus, then the
   :class:`~services.common.dlq.ConsumerGuard`.
3. The handler runs: the codec decodes ``r``, the domain decides, the handler awaits its
   Postgres commit and awaits each publish. A publish returns only once the idempotent
   producer got ``acks=all``, so the output is durable before step 5. Values a handler
   *returns* to ``@publisher`` topics are published, and awaited, after it returns and still
   before step 5.
4. The guard books the outcome (see :mod:`services.common.dlq`).
5. faststream commits synchronously (``consumer.commit()``): ``o + 1`` for ``p``, and for the
   consumer's other partitions the positions after records already finished (a subscriber
   handles one record at a time, so everything consumed is finished).

Failure scenarios
-----------------
* **Process dies anywhere before 5**: nothing was committed past ``o``; after the rebalance the
  next owner (or the restarted process) gets ``r`` again and repeats its effects. This is why
  every effect is idempotent (event ids deduplicated, upserts, outcomes applied by version).
* **Handler raises (not InvalidEvent)**: the guard waits a capped, jittered backoff, then the
  policy seeks ``p`` back to ``o``: ``r`` comes again in the same process. When the
  redelivery policy gives up, the consumer halts (below) instead of skipping ``r``.
* **A publish or the Postgres commit fails**: the handler raises, as above. A Postgres commit
  that succeeded before a failed publish is repeated on redelivery and deduplicated by event id.
* **The commit itself fails** (rebalance in progress, coordinator moved): faststream logs it
  at CRITICAL and goes on; the next owner gets ``r`` again (at-least-once, as above).
* **Rebalance while the handler runs**: the partition may move before step 5; its new owner
  starts at the last committed offset and repeats ``r``.
* **InvalidEvent** (including decode failures): ``r`` goes to its dead-letter topic with origin
  headers (acks=all), then step 5 commits it. If the process dies in between, ``r`` is
  dead-lettered twice; DLQ readers deduplicate on ``duplex-original-{topic,partition,offset}``.
* **Too much invalid input, or retries exhausted**: the consumer's partitions are paused, ``r``
  is not committed, :class:`~services.common.dlq.Halt` fires, and the service's entry
  (:func:`services.common.service.serve`) stops it and exits with
  :data:`~services.common.service.EXIT_HALTED`. After a restart the breaker starts afresh, so a still-broken
  input is dead-lettered up to ``max_consecutive_invalid`` more times before it halts again;
  the orchestrator's crash-loop backoff slows that down.

``AckPolicy.MANUAL`` is the other accepted policy, for handlers that batch work and commit
themselves (``await msg.ack()`` after their effects are durable). ``ACK_FIRST`` (auto-commit,
at-most-once), ``ACK`` and ``REJECT_ON_ERROR`` (commit even on failure) lose events and are refused.

Batch subscribers
=================
:meth:`ServiceKafka.batch_subscriber` declares a handler of up to ``max_records`` records at a
time (``getmany``; records of one partition in offset order), with the same guarantees:

1. faststream hands over the batch (the guard middleware only steps in if it fails, below).
2. Each record is decoded on its own; an undecodable one is set aside as invalid.
3. The handler gets the decoded events in batch order and processes them in that order (so the
   records of one key stay in offset order). It returns the ones it refuses, by index, with
   :class:`InvalidEvent`; when it returns, the effects of every other event are durable
   (Postgres committed, publishes acked).
4. In offset order, each record is booked with the guard: valid ones as processed, invalid ones
   dead-lettered (acks=all) or, past the breaker's limit, the consumer halts.
5. faststream commits once for the batch: the consumer's positions, all past the batch.

If the handler raises (or a dead letter cannot be sent), the guard middleware backs off as for
one record (attempts counted on the batch's first record; halting once the policy gives up),
then ``NACK_ON_ERROR`` seeks every partition of the batch back to its first record: the whole
batch comes again, and every effect of it must be idempotent, exactly as for a record
redelivered alone.

Batches whose handler commits itself
------------------------------------
A handler that keeps work past its return (the writer's commands wait for their tenant's batch)
cannot have faststream commit the batch: given :class:`ManualOffsets`, the subscriber uses
``AckPolicy.MANUAL`` and nothing is committed by faststream; the handler's owner commits the
offsets it knows to be finished. Steps 1 to 4 stay, with the handler also given each event's
record (``Batch.records``), and the subscriber's owner told of every record it dead-letters:

* an undecodable record is :meth:`ManualOffsets.hold` before the handler sees the batch, and a
  record the handler refuses is held by the handler itself before it returns (so that no later
  record of its partition, once finished, lets a commit pass it);
* once the dead letters of the batch are acknowledged (acks=all), the records are
  :meth:`ManualOffsets.release`; until then their offsets are not committed past.

A dead letter that cannot be sent is sent again after the redelivery backoff, until the
redelivery policy gives up and the consumer halts (there is no seek back: the rest of the batch
is already with the handler). A halt (the breaker tripped) leaves the record held, never
committed, exactly as for one record. A handler that raises halts the consumer at once: part of
its batch may be with it already, and the rest can neither come again nor be passed over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from aiokafka import ConsumerRecord  # at run time: the batch handler's annotation is resolved by faststream
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber, DefaultSubscriber
from faststream.params import NoCast
from google.protobuf.message import Message
from opentelemetry import propagate, trace

from services.common.codec import (
    MESSAGE_TYPE_HEADER,
    MessageTypeHeaderMiddleware,
    ProtobufCodec,
    decode_event,
    encode_event,
    event_headers,
    partition_of,
)
from services.common.dlq import ConsumerGuard, DeadLetter, DeadLetterPublisher, DlqLimit, Halt, Sleep
from services.common.errors import ConsumerHalted, InvalidEvent, RecordTooLargeError
from services.common.kafka_security import security, token_provider
from services.common.retry import RetryPolicy
from services.common.service import Check, Health, Running
from services.common.settings import KafkaSettings
from services.common.telemetry import batch_span
from services.common.topics import Topic, TopicNames

if TYPE_CHECKING:
    from faststream._internal.basic_types import DecodedMessage, SendableMessage
    from faststream._internal.types import BrokerMiddleware
    from faststream.kafka.publisher.usecase import DefaultPublisher
    from faststream.message import StreamMessage

    from services.common.telemetry import Telemetry

log = logging.getLogger(__name__)

AFTER_EFFECTS: Final = AckPolicy.NACK_ON_ERROR
"""Commit after the handler's effects are durable; on error, redeliver (see the module doc)."""

ALLOWED_ACK_POLICIES: Final = frozenset({AckPolicy.NACK_ON_ERROR, AckPolicy.MANUAL})

# Redelivery waits at most 30 s, well inside max.poll.interval.ms (5 min), and halts after 25
# attempts on one record (at most ~10 minutes, ~5 on average with jitter) so that a lasting
# outage becomes a visible crash loop instead of a silent stall.
DEFAULT_REDELIVERY = RetryPolicy(base_delay=0.5, max_delay=30.0, max_attempts=25)

# A batch is whatever getmany has buffered, up to this many records: large enough that the fixed
# costs of a batch (one transaction, one offset commit, one wait for acks) vanish per record, small
# enough that a batch takes well under a second.
DEFAULT_MAX_RECORDS = 500
# How long getmany waits when nothing is buffered; it returns at once when something is, so this
# only bounds the idle poll, not the latency of a busy consumer.
DEFAULT_BATCH_TIMEOUT_MS = 20
# While halted, a batch that still arrives is refused after this pause (as the guard does).
_HALTED_PAUSE_SECONDS = 0.5
# A readiness probe's look at the cluster answers within this.
_PING_SECONDS = 2.0

M = TypeVar("M", bound=Message)


class Batch(list[M]):
    """A batch handler's decoded events in their records' order, with ``keys[i]`` the record key
    ``self[i]`` came with (a handler may check what the key says against what the event says)
    and ``records[i]`` the record itself (partition, offset, headers: for handlers that commit
    themselves)."""

    def __init__(
        self,
        events: Iterable[M],
        keys: Iterable[bytes | None],
        records: Iterable[ConsumerRecord[Any, Any]] = (),
    ) -> None:
        super().__init__(events)
        self.keys: list[bytes | None] = list(keys)
        self.records: list[ConsumerRecord[Any, Any]] = list(records)


class ManualOffsets(Protocol):
    """The offsets of a batch subscriber whose handler commits itself (module doc, "Batches
    whose handler commits itself"): told which records are being dead-lettered."""

    def hold(self, record: ConsumerRecord[Any, Any]) -> None:
        """``record`` is to be dead-lettered: nothing may be committed past it until released."""

    def release(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """The dead letters of ``records`` are acknowledged: their offsets may be committed past."""


BatchHandler = Callable[[Batch[M]], Awaitable[Mapping[int, InvalidEvent]]]
"""Processes decoded events in order; returns the refused ones by index (see the module doc)."""


def make_broker(
    settings: KafkaSettings,
    *,
    service_name: str,
    middlewares: Sequence[BrokerMiddleware[Any, Any]] = (),
    logger: logging.Logger | None = None,
) -> KafkaBroker:
    """A broker whose producer waits for ``acks=all`` with idempotence, and never auto-commits.

    Topics are provisioned from the topic table, never created on the fly by a subscriber.
    """
    return KafkaBroker(
        settings.bootstrap_servers,
        security=security(settings),
        sasl_oauth_token_provider=token_provider(settings),
        client_id=f"{settings.client_id}-{service_name}",
        max_request_size=settings.max_request_size,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        # Belt and braces: a subscriber declared without the helper still commits after effects.
        ack_policy=AFTER_EFFECTS,
        codec=ProtobufCodec(),
        middlewares=(*middlewares, MessageTypeHeaderMiddleware),
        logger=logger or logging.getLogger(f"duplex.{service_name}.kafka"),
        # faststream logs every message received and processed; that is debugging detail.
        log_level=logging.DEBUG,
    )


@dataclass(frozen=True)
class ServiceKafka:
    """One service's Kafka wiring: broker, topic names, the guard and the halt switch."""

    broker: KafkaBroker
    topic_names: TopicNames
    service_name: str
    guard: ConsumerGuard
    halt: Halt
    # The largest record the producer sends (KAFKA_MAX_REQUEST_SIZE).
    max_request_size: int = 1024 * 1024
    # Batch subscribers' and senders' tracer; None when tracing is off (they then skip it).
    tracer: trace.Tracer | None = None

    def topic(self, topic: Topic) -> str:
        """Physical name of ``topic`` in this deployment."""
        return self.topic_names(topic)

    @property
    def group(self) -> str:
        """The service's consumer group in this deployment: prefixed like its topics."""
        return f"{self.topic_names.prefix}{self.service_name}"

    def subscriber(
        self,
        topic: Topic,
        *,
        message_type: type[Message],
        ack_policy: AckPolicy,
        group_id: str | None = None,
        **options: Any,
    ) -> DefaultSubscriber:
        """Declare a handler of ``topic``'s events, decoded as ``message_type``.

        ``ack_policy`` is required: :data:`AFTER_EFFECTS` for ordinary handlers,
        ``AckPolicy.MANUAL`` for handlers that commit themselves. The consumer group is the
        service name; a new group starts at the earliest retained event (nothing skipped).
        The handler parameter is annotated ``NoCast[MessageType]``.
        """
        if ack_policy not in ALLOWED_ACK_POLICIES:
            raise ValueError(
                f"ack_policy {ack_policy.name} can commit an event that was not processed; "
                "use AFTER_EFFECTS or AckPolicy.MANUAL"
            )
        if options.get("batch"):
            raise ValueError("batch subscribers are not guarded here; use batch_subscriber, which guards each record")
        options.setdefault("auto_offset_reset", "earliest")
        subscriber = self.broker.subscriber(
            self.topic(topic),
            group_id=group_id or self.group,
            ack_policy=ack_policy,
            codec=ProtobufCodec(message_type),
            **options,
        )
        # Without batch=True faststream builds a DefaultSubscriber (or its concurrent subclass).
        assert isinstance(subscriber, DefaultSubscriber)
        return subscriber

    def batch_subscriber(
        self,
        topic: Topic,
        *,
        message_type: type[M],
        handler: BatchHandler[M],
        max_records: int = DEFAULT_MAX_RECORDS,
        batch_timeout_ms: int = DEFAULT_BATCH_TIMEOUT_MS,
        group_id: str | None = None,
        offsets: ManualOffsets | None = None,
        **options: Any,
    ) -> BatchSubscriber:
        """Declare ``handler`` for batches of ``topic``'s events, guarded record by record.

        The commit protocol is :data:`AFTER_EFFECTS`, once per batch (module doc, "Batch
        subscribers"); with ``offsets``, the handler's owner commits instead, and ``offsets``
        holds the records being dead-lettered (module doc, "Batches whose handler commits
        itself"). Group and offset reset as for :meth:`subscriber`.
        """
        options.setdefault("auto_offset_reset", "earliest")
        subscriber = self.broker.subscriber(
            self.topic(topic),
            group_id=group_id or self.group,
            ack_policy=AFTER_EFFECTS if offsets is None else AckPolicy.MANUAL,
            batch=True,
            max_records=max_records,
            batch_timeout_ms=batch_timeout_ms,
            codec=_RawRecords(),
            **options,
        )
        assert isinstance(subscriber, BatchSubscriber)
        guard = self.guard
        tracer = self.tracer
        name = self.topic(topic)

        @subscriber
        async def consume(records: NoCast[list[ConsumerRecord[Any, Any]]], message: KafkaMessage) -> None:
            consumer = getattr(message, "consumer", None)
            if tracer is None or not records:
                await _consume_batch(guard, records, message_type, handler, consumer, offsets)
                return
            attributes = {
                "messaging.system": "kafka",
                "messaging.operation": "process",
                "messaging.destination.name": name,
                "messaging.batch.message_count": len(records),
            }
            with batch_span(tracer, f"{name} process", [r.headers for r in records], attributes=attributes):
                await _consume_batch(guard, records, message_type, handler, consumer, offsets)

        return subscriber

    def sender(self, topic: Topic) -> Sender:
        """Publisher of many of ``topic``'s events at once, for batch handlers (see :class:`Sender`)."""
        return Sender(
            self.broker, self.topic(topic), max_request_size=self.max_request_size, traced=self.tracer is not None
        )

    def publisher(self, topic: Topic, **options: Any) -> DefaultPublisher:
        """A publisher of protobuf events to ``topic``; ``await p.publish(event, key=...)``."""
        publisher: DefaultPublisher = self.broker.publisher(self.topic(topic), **options)
        return publisher


def make_kafka(
    settings: KafkaSettings,
    *,
    service_name: str,
    topic_names: TopicNames,
    telemetry: Telemetry | None = None,
    dlq_limit: DlqLimit | None = None,
    redelivery: RetryPolicy = DEFAULT_REDELIVERY,
    halt: Halt | None = None,
    middlewares: Sequence[BrokerMiddleware[Any, Any]] = (),
    sleep: Sleep | None = None,
) -> ServiceKafka:
    """Build the service's broker with tracing, metrics and the dead-letter guard installed.

    Middleware order, outermost first: tracing, Prometheus, ``middlewares``, the guard. The
    guard is innermost so that a record it dead-letters still has its span and its metrics.
    """
    halt = halt or Halt()
    outer = (*(telemetry.kafka_middlewares() if telemetry else ()), *middlewares)
    broker = make_broker(settings, service_name=service_name, middlewares=outer)
    dead_letters = DeadLetterPublisher(_DeadLetterSend(broker), topic_names, service_name=service_name)
    guard_options: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    guard = ConsumerGuard(
        dead_letters=dead_letters,
        service_name=service_name,
        limit=dlq_limit or DlqLimit(),
        redelivery=redelivery,
        halt=halt,
        metrics=telemetry.metrics if telemetry else None,
        **guard_options,
    )
    broker.add_middleware(guard)
    tracer = telemetry.batch_tracer() if telemetry else None
    return ServiceKafka(broker, topic_names, service_name, guard, halt, settings.max_request_size, tracer)


# What a record adds to its value and key (headers: content and message type, trace context; the
# record and batch framing), with room to spare.
RECORD_HEADROOM = 1024


def oversize(value: bytes, key: bytes, limit: int) -> str | None:
    """Why a record of ``value`` and ``key`` cannot be produced under ``limit`` (KAFKA_MAX_REQUEST_SIZE);
    None when it can."""
    size = len(value) + len(key) + RECORD_HEADROOM
    if size <= limit:
        return None
    return (
        f"{size:,} bytes, over the {limit:,}-byte limit of a Kafka record"
        " (KAFKA_MAX_REQUEST_SIZE, which the broker's message.max.bytes must allow)"
    )


class Sender:
    """Publishes many protobuf events to one topic at once, for batch handlers.

    :meth:`publish_all` hands every record to the broker's own idempotent producer in record
    batches it builds itself, each key in the partition Kafka's default partitioner gives it
    (:func:`~services.common.codec.partition_of`), then waits until the broker acknowledged them
    all (acks=all); records of one key keep their order. The records look as if published
    through faststream (content type, message type and W3C trace context headers: the trace
    continues from the current span, the batch's), but faststream's per-publish middlewares are
    skipped: their span and metrics per record cost more than everything else a batch handler
    does per record. Without ``traced`` (tracing off) no trace context is written at all.
    """

    def __init__(
        self, broker: KafkaBroker, topic: str, *, max_request_size: int = 1024 * 1024, traced: bool = False
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._max_request_size = max_request_size
        self._traced = traced

    async def publish_all(self, events: Sequence[tuple[Message, bytes]]) -> None:
        """Publish (event, key) pairs in order; returns once all are acknowledged.

        :class:`RecordTooLargeError` names the first event over the producer's size limit, before
        any is sent: the input it came from can then be refused alone, instead of the producer
        failing the whole batch on every redelivery.
        """
        if not events:
            return
        values = [encode_event(event) for event, _ in events]
        for index, (value, (_, key)) in enumerate(zip(values, events, strict=True)):
            reason = oversize(value, key, self._max_request_size)
            if reason is not None:
                raise RecordTooLargeError(index, reason)
        trace_headers: dict[str, str] = {}
        if self._traced:
            propagate.inject(trace_headers)
        headers: dict[type[Message], list[tuple[str, bytes]]] = {}
        for event, _ in events:
            kind = type(event)
            if kind not in headers:
                carrier = event_headers(event) | trace_headers
                headers[kind] = [(name, text.encode()) for name, text in carrier.items()]
        producer = _producer(self._broker)
        count = len(await producer.partitions_for(self._topic))
        await _send_batched(
            producer,
            (
                (self._topic, partition_of(key, count), key, value, headers[type(event)])
                for (event, key), value in zip(events, values, strict=True)
            ),
        )


def _producer(broker: KafkaBroker) -> Any:
    """The started aiokafka producer faststream keeps; it has no public accessor."""
    return broker.config.producer._producer.producer  # type: ignore[attr-defined]


_Outgoing = tuple[str, int, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""A record to send: topic, partition, key, value, headers."""


async def _send_batched(producer: Any, records: Iterable[_Outgoing]) -> None:
    """Send ``records`` in order as record batches built here, one per partition at a time (a full
    one goes and the next starts); returns once the broker acknowledged them all (acks=all).

    Batch handlers publish every record they make this way: ``producer.send`` costs about three
    times as much per record (a future each, the pure-Python partitioner, a size estimate), and
    one key's records still keep their order, all going to one partition in turn.
    """
    acks: list[asyncio.Future[Any]] = []
    batches: dict[tuple[str, int], Any] = {}
    for topic, partition, key, value, headers in records:
        batch = batches.get((topic, partition))
        if batch is not None and batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            acks.append(await producer.send_batch(batch, topic, partition=partition))  # full
            batch = None
        if batch is None:
            batch = batches[(topic, partition)] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    for (topic, partition), batch in batches.items():
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*acks)


class _DeadLetterSend:
    """Sends dead letters on the broker's producer directly, as :class:`Sender` does: a
    quarantined pair dead-letters every change it gets, and faststream's span and metrics per
    publish would cost more than the rest of such a rejection (a letter keeps its record's
    headers, trace context included)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    async def __call__(self, letters: Sequence[DeadLetter]) -> None:
        if not hasattr(self._broker.config.producer, "_producer"):
            # faststream's in-memory test broker has no aiokafka producer: its own publish routes
            # the record to the test's subscribers.
            for letter in letters:
                await self._broker.publish(letter.value, letter.topic, key=letter.key, headers=letter.headers)
            return
        producer = _producer(self._broker)
        counts: dict[str, int] = {}
        for letter in letters:
            if letter.topic not in counts:
                counts[letter.topic] = len(await producer.partitions_for(letter.topic))
        await _send_batched(
            producer,
            (
                (
                    letter.topic,
                    letter.partition % counts[letter.topic],
                    letter.key,
                    letter.value,
                    [(name, text.encode()) for name, text in letter.headers.items()],
                )
                for letter in letters
            ),
        )


class _RawRecords:
    """Batch codec handing the records over undecoded: each is decoded on its own, so that one
    undecodable record is dead-lettered instead of failing its whole batch."""

    __slots__ = ()

    async def decode_batch(self, msg: StreamMessage[Sequence[Any]]) -> list[DecodedMessage]:
        return list(msg.raw_message)

    async def decode(self, msg: StreamMessage[Any]) -> DecodedMessage:
        return msg.raw_message  # type: ignore[no-any-return]

    async def encode(self, msg: SendableMessage, serializer: Any = None) -> tuple[bytes, str | None]:
        return await ProtobufCodec().encode(msg, serializer)

    async def encode_batch(
        self, msgs: Sequence[SendableMessage], serializer: Any = None
    ) -> list[tuple[bytes, str | None]]:
        return [await self.encode(m, serializer) for m in msgs]


async def _consume_batch(
    guard: ConsumerGuard,
    records: Sequence[ConsumerRecord[Any, Any]],
    message_type: type[M],
    handler: BatchHandler[M],
    consumer: Any,
    offsets: ManualOffsets | None = None,
) -> None:
    """One batch through decoding, the handler and the guard (module doc, "Batch subscribers")."""
    if not records:
        return
    if guard.halt.error is not None:
        await guard.sleep(_HALTED_PAUSE_SECONDS)
        raise guard.halt.error
    invalid: dict[int, InvalidEvent] = {}
    events: Batch[M] = Batch((), ())
    positions: list[int] = []  # index in ``records`` of each decoded event
    for index, record in enumerate(records):
        declared = next((v.decode("utf-8", "replace") for k, v in record.headers if k == MESSAGE_TYPE_HEADER), None)
        try:
            events.append(decode_event(message_type, record.value or b"", declared_type=declared))
        except InvalidEvent as error:
            invalid[index] = error
            if offsets is not None:
                offsets.hold(record)
            continue
        events.keys.append(record.key)
        events.records.append(record)
        positions.append(index)
    # An exception from here on (the handler's, or a dead letter that cannot be sent) fails the
    # whole batch: the guard middleware backs off, then it comes again (given ``offsets``, see the
    # module doc, "Batches whose handler commits itself").
    if offsets is None:
        refused = await handler(events) if events else {}
    else:
        refused = await _handled_or_halted(guard, records, events, handler, consumer)
    invalid.update({positions[i]: reason for i, reason in refused.items()})
    if offsets is None:
        await _book(guard, records, invalid, consumer)
        return
    dead = [(records[index], invalid[index]) for index in sorted(invalid)]
    try:
        await _book(guard, records, invalid, consumer)
    except ConsumerHalted:
        raise  # what is held stays held: never committed past
    except Exception as error:
        if not dead:
            raise
        await _dead_letter_again(guard, dead, consumer, error)
    if dead:
        offsets.release([record for record, _ in dead])


async def _book(
    guard: ConsumerGuard,
    records: Sequence[ConsumerRecord[Any, Any]],
    invalid: Mapping[int, InvalidEvent],
    consumer: Any,
) -> None:
    """Each record of a batch booked with the guard in offset order; returns once every dead
    letter is acknowledged (module doc, "Batch subscribers", step 4)."""
    # The lag gauge keeps only its latest value: set it once per partition, from its last record.
    last = {(r.topic, r.partition): r.offset for r in records}
    # The batch's dead letters are sent together once all are booked, and acknowledged before the
    # batch counts as done: a stream of rejections (a quarantined pair) costs no round trip each.
    letters: list[DeadLetter] = []
    for index, record in enumerate(records):
        rejection = invalid.get(index)
        if rejection is None:
            guard.succeeded(record, consumer if last[(record.topic, record.partition)] == record.offset else None)
        else:
            await guard.rejected(record, rejection, consumer, letters)
    if letters:
        await guard.dead_letters.send(letters)


async def _handled_or_halted(
    guard: ConsumerGuard,
    records: Sequence[ConsumerRecord[Any, Any]],
    events: Batch[M],
    handler: BatchHandler[M],
    consumer: Any,
) -> Mapping[int, InvalidEvent]:
    """The handler's refusals; a handler that commits itself and fails halts the consumer: part of
    the batch may be with it already, so the batch can neither come again (nothing seeks back) nor
    be passed over (a later commit would pass what it dropped)."""
    try:
        return await handler(events) if events else {}
    except Exception as error:
        halted = ConsumerHalted(f"batch handler failed: {type(error).__name__}: {error}", topic=records[0].topic)
        pause = getattr(consumer, "pause", None)
        if pause is not None:
            pause(*consumer.assignment())
        log.critical("consumer halted", extra={"topic": records[0].topic, "reason": halted.reason})
        guard.halt.trip(halted)
        raise halted from error


async def _dead_letter_again(
    guard: ConsumerGuard,
    dead: Sequence[tuple[ConsumerRecord[Any, Any], InvalidEvent]],
    consumer: Any,
    error: Exception,
) -> None:
    """Send ``dead`` letters until all are acknowledged: a batch whose handler commits itself is not
    redelivered, so its dead letters are retried here (halting once the redelivery policy gives up).
    They are sent as they are, without the breaker's accounting again (the failure is the
    dead-letter topic's, not the input's); a dead letter sent twice is deduplicated by its readers
    on its origin headers."""
    while True:
        await guard.failed(dead[0][0], error, consumer)
        try:
            await guard.dead_letters.send([guard.dead_letters.letter(record, reason) for record, reason in dead])
        except Exception as again:
            error = again
            continue
        return


@asynccontextmanager
async def consuming(kafka: ServiceKafka, *, ready: Sequence[Check] = ()) -> AsyncIterator[Running]:
    """``kafka``'s consumers and producer started until the block exits.

    Declare every subscriber before entering: they start with the broker. Ready while the
    cluster answers, no consumer has halted and every check in ``ready`` (the service's other
    dependencies) holds; live while no consumer has halted.
    """

    async def not_halted() -> bool:
        return kafka.halt.error is None

    async def reachable() -> bool:
        return kafka.halt.error is None and await kafka.broker.ping(timeout=_PING_SECONDS)

    await kafka.broker.start()
    try:
        yield Running(health=Health(live=(not_halted,), ready=(reachable, *ready)), halt=kafka.halt)
    finally:
        await kafka.broker.stop()

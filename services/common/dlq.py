"""Dead letters, the circuit breaker in front of them, and redelivery of failed events.

:class:`ConsumerGuard` is a faststream broker middleware; :func:`services.common.kafka.make_broker`
installs it as the innermost middleware, so every handler of the service gets the same
treatment without any per-handler code. For each consumed record it decides:

================================  ============================================================
the handler...                    what happens
================================  ============================================================
returns                           the breaker records a valid event; the ack policy commits
raises :class:`InvalidEvent`      unless that would trip the breaker: the original key, value
(decoding included)               and headers go to the source topic's dead-letter topic with
                                  ``duplex-*`` origin headers, then the record is acked
                                  (committed) so the partition moves on
raises :class:`InvalidEvent`      the consumer halts: its partitions are paused, the record is
and the breaker trips             not committed, :class:`ConsumerHalted` is raised and the
                                  service's :class:`Halt` fires (the process exits non-zero)
raises anything else              after a capped, jittered backoff the error propagates and the
                                  ``NACK_ON_ERROR`` policy seeks back: the same record comes
                                  again; once the redelivery policy gives up the consumer halts
================================  ============================================================

The breaker (arroyo's ``DlqLimit``) exists because a bad deploy or a wrong producer makes every
event "invalid": dead-lettering them all would empty the topic into the DLQ and make the
pipeline look healthy. Past the limit it is better to stop and page someone. It trips when
``max_consecutive_invalid`` invalid events come in a row, or when more than
``max_invalid_ratio`` of the last ``window`` events (once at least ``min_samples`` were seen)
were invalid. The event that would cross the limit is neither dead-lettered nor committed, so
after the fix the consumer resumes exactly there. An event rejected as ``contained`` (see
:class:`InvalidEvent`) is dead-lettered without being counted either way: a handler that
contains bad input per tenant decides itself when that input is too much.

Batches (:meth:`services.common.kafka.ServiceKafka.batch_subscriber`) have no single offset
to commit past an invalid event, so the batch subscriber books each record itself with
:meth:`ConsumerGuard.succeeded` and :meth:`ConsumerGuard.rejected`. What fails a whole batch
(its handler raised, a dead letter could not be sent, even faststream's own argument parsing)
gets the redelivery backoff here, counted on the batch's first record, before ``NACK_ON_ERROR``
seeks the batch back; a failure never turns into a hot redelivery loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from aiokafka import TopicPartition
from faststream import BaseMiddleware
from faststream.exceptions import IgnoredException

from services.common.codec import tenant_of_key
from services.common.errors import ConsumerHalted, InvalidEvent
from services.common.metrics import UNKNOWN_TENANT, Metrics
from services.common.retry import RetryPolicy
from services.common.topics import Topic, TopicNames

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

log = logging.getLogger(__name__)

HEADER_PREFIX = "duplex-"
ORIGINAL_TOPIC = "duplex-original-topic"
ORIGINAL_PARTITION = "duplex-original-partition"
ORIGINAL_OFFSET = "duplex-original-offset"
ORIGINAL_TIMESTAMP = "duplex-original-timestamp"
ERROR_REASON = "duplex-error-reason"
ERROR_CLASS = "duplex-error-class"
FAILED_AT = "duplex-failed-at"
SERVICE = "duplex-service"

# A Kafka header value has no hard limit, but a reason is for humans and dashboards.
_MAX_REASON_CHARS = 1000
# While halted, a record that still reaches the guard (a rebalance handed us new partitions)
# is refused after this pause, so that the refusal does not spin until the process exits.
_HALTED_PAUSE_SECONDS = 0.5


# ----------------------------------------------------------------------------- the breaker


@dataclass(frozen=True)
class DlqLimit:
    """When dead-lettering must give way to halting (arroyo's ``DlqLimit``)."""

    max_invalid_ratio: float = 0.5
    max_consecutive_invalid: int = 100
    window: int = 1000
    min_samples: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_invalid_ratio <= 1.0:
            raise ValueError("max_invalid_ratio must be within [0, 1]")
        if self.max_consecutive_invalid < 0:
            raise ValueError("max_consecutive_invalid must not be negative")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError("min_samples must be within [1, window]")


class CircuitBreaker:
    """Outcomes of the recent events of one source topic; pure logic, no I/O.

    Once tripped it stays tripped: only a restart (after a human looked) resets it.
    """

    def __init__(self, limit: DlqLimit) -> None:
        self.limit = limit
        self._recent: deque[bool] = deque(maxlen=limit.window)  # True = invalid
        self._invalid_in_window = 0
        self._consecutive_invalid = 0
        self.tripped: str | None = None

    @property
    def consecutive_invalid(self) -> int:
        """Invalid events since the last valid one."""
        return self._consecutive_invalid

    @property
    def invalid_ratio(self) -> float:
        """Share of invalid events in the window (0 when empty)."""
        return self._invalid_in_window / len(self._recent) if self._recent else 0.0

    def assess_invalid(self) -> str | None:
        """Why one more invalid event would cross the limit, or None if it may be dead-lettered."""
        if self.tripped is not None:
            return self.tripped
        limit = self.limit
        if self._consecutive_invalid + 1 > limit.max_consecutive_invalid:
            return f"more than {limit.max_consecutive_invalid} invalid events in a row"
        full = len(self._recent) == limit.window
        samples = len(self._recent) + (0 if full else 1)
        # When the window is full the oldest outcome falls out as the new one comes in.
        invalid = self._invalid_in_window + 1 - (1 if full and self._recent[0] else 0)
        if samples >= limit.min_samples and invalid / samples > limit.max_invalid_ratio:
            return f"{invalid} of the last {samples} events invalid (limit {limit.max_invalid_ratio:.0%})"
        return None

    def record_valid(self) -> None:
        """A handler finished an event."""
        self._push(invalid=False)
        self._consecutive_invalid = 0

    def record_invalid(self) -> None:
        """An invalid event was dead-lettered."""
        self._push(invalid=True)
        self._consecutive_invalid += 1

    def trip(self, reason: str) -> None:
        """Latch the breaker open."""
        if self.tripped is None:
            self.tripped = reason

    def _push(self, *, invalid: bool) -> None:
        if len(self._recent) == self.limit.window and self._recent[0]:
            self._invalid_in_window -= 1
        self._recent.append(invalid)
        self._invalid_in_window += invalid


# ----------------------------------------------------------------------------- halting


class Halt:
    """The service's emergency stop: fired once, by whichever consumer gives up first.

    :func:`services.common.service.serve` subscribes to it to stop the service and exit non-zero.
    """

    def __init__(self) -> None:
        self.error: ConsumerHalted | None = None
        self._callbacks: list[Callable[[ConsumerHalted], None]] = []
        self._fired = asyncio.Event()

    def on_trip(self, callback: Callable[[ConsumerHalted], None]) -> None:
        """Call ``callback`` when the halt fires (at once if it already has)."""
        self._callbacks.append(callback)
        if self.error is not None:
            callback(self.error)

    def trip(self, error: ConsumerHalted) -> None:
        """Fire the halt; later calls keep the first error."""
        if self.error is not None:
            return
        self.error = error
        self._fired.set()
        for callback in self._callbacks:
            callback(error)

    async def wait(self) -> ConsumerHalted:
        """Return the error once the halt has fired."""
        await self._fired.wait()
        assert self.error is not None
        return self.error


# ----------------------------------------------------------------------------- dead letters


def dead_letter_headers(
    *,
    original_headers: Sequence[tuple[str, bytes]],
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    error: BaseException,
    service: str,
    failed_at: datetime,
) -> dict[str, str]:
    """The dead-letter record's headers: the original ones plus where it came from and why.

    Original header values are carried as UTF-8 text (faststream's header model); a value that
    is not valid UTF-8 arrives with replacement characters.
    """
    headers = {
        name: value.decode("utf-8", errors="replace")
        for name, value in original_headers
        # A record replayed from a DLQ and rejected again describes only its latest failure.
        if not name.startswith(HEADER_PREFIX + "original-") and not name.startswith(HEADER_PREFIX + "error-")
    }
    reason = error.reason if isinstance(error, InvalidEvent) else str(error)
    headers.update(
        {
            ORIGINAL_TOPIC: topic,
            ORIGINAL_PARTITION: str(partition),
            ORIGINAL_OFFSET: str(offset),
            ERROR_REASON: reason[:_MAX_REASON_CHARS],
            ERROR_CLASS: f"{type(error).__module__}.{type(error).__qualname__}",
            FAILED_AT: failed_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            SERVICE: service,
        }
    )
    if timestamp_ms is not None and timestamp_ms >= 0:
        headers[ORIGINAL_TIMESTAMP] = str(timestamp_ms)
    return headers


@dataclass(frozen=True)
class DeadLetter:
    """One record on its way to a dead-letter topic: the original key and value, new headers.

    ``partition`` is the source record's: a letter goes to that partition modulo the dead-letter
    topic's partition count, so one key's letters keep their order there, as they had it in the
    source topic, without hashing every key again (with the topic table's 12 and 3 partitions
    that is the partition the key hashes to anyway).
    """

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


class Send(Protocol):
    """What the dead-letter publisher needs of a broker: the letters sent in order, returning once
    the broker acknowledged them all (acks=all)."""

    def __call__(self, letters: Sequence[DeadLetter]) -> Awaitable[None]: ...


class DeadLetterPublisher:
    """Sends rejected records to their source topic's dead-letter topic, and waits for acks=all."""

    def __init__(
        self,
        send: Send,
        topic_names: TopicNames,
        *,
        service_name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.send = send
        self._topic_names = topic_names
        self._service_name = service_name
        self._clock = clock
        self._logical = {topic_names(topic): topic for topic in topic_names.table.topics}

    def dead_letter_topic(self, physical_topic: str) -> str | None:
        """The physical dead-letter topic for records of ``physical_topic``, if it has one."""
        logical: Topic | None = self._logical.get(physical_topic)
        if logical is None or self._topic_names.table.topics[logical].dlq is None:
            return None
        return self._topic_names(self._topic_names.dlq_of(logical))

    def letter(self, record: ConsumerRecord[Any, Any], error: BaseException) -> DeadLetter:
        """``record``'s dead letter. Raises LookupError when its topic has no dead-letter topic."""
        target = self.dead_letter_topic(record.topic)
        if target is None:
            raise LookupError(f"topic {record.topic} has no dead-letter topic")
        headers = dead_letter_headers(
            original_headers=record.headers,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            error=error,
            service=self._service_name,
            failed_at=self._clock(),
        )
        return DeadLetter(target, record.partition, record.key, record.value, headers)

    async def publish(self, record: ConsumerRecord[Any, Any], error: BaseException) -> str:
        """Dead-letter ``record`` and wait for the broker's acknowledgement; returns the
        dead-letter topic. Raises LookupError without one."""
        letter = self.letter(record, error)
        await self.send([letter])
        return letter.topic


# ----------------------------------------------------------------------------- the middleware


Sleep = Callable[[float], Awaitable[None]]


class ConsumerGuard:
    """Broker middleware factory: DLQ + circuit breaker + redelivery backoff for every handler.

    One instance per service holds the per-topic breakers and per-partition retry counts.
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetterPublisher,
        service_name: str,
        limit: DlqLimit,
        redelivery: RetryPolicy,
        halt: Halt,
        metrics: Metrics | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.dead_letters = dead_letters
        self.service_name = service_name
        self.limit = limit
        self.redelivery = redelivery
        self.halt = halt
        self.metrics = metrics
        self.sleep = sleep
        self._breakers: dict[str, CircuitBreaker] = {}
        # (topic, partition) -> (offset, failed attempts at that offset)
        self._failures: dict[tuple[str, int], tuple[int, int]] = {}

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _GuardMiddleware:
        return _GuardMiddleware(msg, context=context, guard=self)

    def breaker(self, topic: str) -> CircuitBreaker:
        """The breaker of one source topic."""
        if topic not in self._breakers:
            self._breakers[topic] = CircuitBreaker(self.limit)
        return self._breakers[topic]

    def succeeded(self, record: ConsumerRecord[Any, Any], consumer: Any) -> None:
        """Bookkeeping for an event a handler finished."""
        self.breaker(record.topic).record_valid()
        self._failures.pop((record.topic, record.partition), None)
        self._count(record, "processed")
        if self.metrics is not None and consumer is not None:
            _observe_lag(self.metrics, self.service_name, record, consumer)

    async def rejected(
        self,
        record: ConsumerRecord[Any, Any],
        error: InvalidEvent,
        consumer: Any,
        letters: list[DeadLetter] | None = None,
    ) -> None:
        """Dead-letter ``record`` or, past the breaker's limit, halt. Returns only if dead-lettered:
        acknowledged or, given ``letters``, its letter added to them for the caller to send with
        the others (a batch's letters then cost one produce request per partition, not one each)."""
        self._failures.pop((record.topic, record.partition), None)
        breaker = self.breaker(record.topic)
        if self.dead_letters.dead_letter_topic(record.topic) is None:
            trip: str | None = "invalid event on a topic without a dead-letter topic"
        elif error.contained:
            trip = None
        else:
            trip = breaker.assess_invalid()
        if trip is not None:
            breaker.trip(trip)
            self._halt(record, consumer, cause="breaker", reason=f"{trip}; last: {error.reason}", error=error)
        if letters is None:
            target = await self.dead_letters.publish(record, error)
        else:
            letters.append(self.dead_letters.letter(record, error))
            target = letters[-1].topic
        if not error.contained:
            breaker.record_invalid()
        self._count(record, "dead_lettered")
        if self.metrics is not None:
            self.metrics.dlq_messages.labels(
                service=self.service_name, topic=record.topic, error_class=type(error).__name__
            ).inc()
        # A contained rejection (a quarantined pair's change) is expected, and counted in metrics:
        # a warning for each would bury everything else in the log.
        level = logging.DEBUG if error.contained else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "event dead-lettered",
                extra=_record_fields(record) | {"dead_letter_topic": target, "reason": error.reason},
            )

    async def failed(self, record: ConsumerRecord[Any, Any], error: BaseException, consumer: Any) -> None:
        """Wait before the redelivery of ``record``, or halt once the redelivery policy gives up."""
        partition = (record.topic, record.partition)
        offset, attempts = self._failures.get(partition, (record.offset, 0))
        attempts = attempts + 1 if offset == record.offset else 1
        self._failures[partition] = (record.offset, attempts)
        if self.redelivery.gives_up_after(attempts):
            self._halt(
                record,
                consumer,
                cause="retries",
                reason=f"gave up after {attempts} attempts: {type(error).__name__}: {error}",
                error=error,
            )
        if self.metrics is not None:
            self.metrics.redeliveries.labels(service=self.service_name, topic=record.topic).inc()
        delay = self.redelivery.delay(attempts)
        log.warning(
            "event failed, redelivering",
            extra=_record_fields(record) | {"attempt": attempts, "retry_in_s": round(delay, 3)},
            exc_info=error,
        )
        await self.sleep(delay)

    def _halt(
        self,
        record: ConsumerRecord[Any, Any],
        consumer: Any,
        *,
        cause: str,
        reason: str,
        error: BaseException,
    ) -> NoReturn:
        _pause(consumer)
        halted = ConsumerHalted(reason, topic=record.topic)
        self._count(record, "halted")
        if self.metrics is not None:
            self.metrics.circuit_breaker_trips.labels(service=self.service_name, topic=record.topic, cause=cause).inc()
        log.critical("consumer halted", extra=_record_fields(record) | {"reason": reason, "cause": cause})
        self.halt.trip(halted)
        raise halted from error

    def _count(self, record: ConsumerRecord[Any, Any], outcome: str) -> None:
        if self.metrics is None:
            return
        # Only events a handler accepted prove their key names a real tenant; anything else is
        # counted as unknown so that garbage keys cannot blow up the label set.
        tenant = tenant_of_key(record.key) if outcome == "processed" else None
        self.metrics.events.labels(
            service=self.service_name,
            tenant=tenant or UNKNOWN_TENANT,
            topic=record.topic,
            outcome=outcome,
        ).inc()


class _GuardMiddleware(BaseMiddleware):
    """One record's pass through the guard (faststream builds one per record)."""

    def __init__(self, msg: Any, /, *, context: ContextRepo, guard: ConsumerGuard) -> None:
        super().__init__(msg, context=context)
        self._guard = guard
        self._consumer: Any = None

    async def on_receive(self) -> None:
        halted = self._guard.halt.error
        if halted is not None and self._record() is not None:
            await self._guard.sleep(_HALTED_PAUSE_SECONDS)
            raise halted

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        # The consumer is only reachable from the parsed message; keep it for pausing.
        self._consumer = getattr(msg, "consumer", None)
        return await call_next(msg)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        record = self._record()
        if record is None:
            await self._batch_failed(exc_val)
            return False
        if exc_val is None:
            self._guard.succeeded(record, self._consumer)
            return False
        # Explicit Ack/Nack/Reject/Skip, StopConsume, an earlier halt, cancellation: not ours.
        if isinstance(exc_val, IgnoredException | ConsumerHalted) or not isinstance(exc_val, Exception):
            return False
        if isinstance(exc_val, InvalidEvent):
            try:
                await self._guard.rejected(record, exc_val, self._consumer)
            except ConsumerHalted:
                raise
            except Exception as error:
                # The dead-letter topic is unreachable: the record must come again, after a pause.
                await self._guard.failed(record, error, self._consumer)
                raise
            # Suppressing the error lets the ack policy commit the record as done.
            return True
        await self._guard.failed(record, exc_val, self._consumer)
        return False

    async def _batch_failed(self, exc_val: BaseException | None) -> None:
        """Back off before a failed batch comes again (halts once the policy gives up)."""
        batch = self.msg
        if not isinstance(batch, tuple) or not batch or not isinstance(exc_val, Exception):
            return
        if isinstance(exc_val, IgnoredException | ConsumerHalted):
            return
        # Counted on a record that is first again after NACK_ON_ERROR's seek-back.
        first = min(batch, key=lambda r: (r.topic, r.partition, r.offset))
        await self._guard.failed(first, exc_val, self._consumer)

    def _record(self) -> ConsumerRecord[Any, Any] | None:
        # Batch subscribers hand over a tuple of records: booked by the subscriber (see module doc).
        msg = self.msg
        return None if msg is None or isinstance(msg, tuple) else msg


def _pause(consumer: Any) -> None:
    # faststream's in-memory test consumer has no assignment to pause.
    pause = getattr(consumer, "pause", None)
    assignment = getattr(consumer, "assignment", None)
    if pause is not None and assignment is not None:
        pause(*assignment())


def _observe_lag(metrics: Metrics, service: str, record: ConsumerRecord[Any, Any], consumer: Any) -> None:
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return
    end = highwater(TopicPartition(record.topic, record.partition))
    if end is not None:
        metrics.consumer_lag.labels(service=service, topic=record.topic, partition=str(record.partition)).set(
            max(0, end - record.offset - 1)
        )


def _record_fields(record: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "tenant_id": tenant_of_key(record.key),
    }

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
  is not committed, :class:`~services.common.dlq.Halt` fires, :func:`run_service` stops the app
  and returns :data:`EXIT_HALTED`. After a restart the breaker starts afresh, so a still-broken
  input is dead-lettered up to ``max_consecutive_invalid`` more times before it halts again;
  the orchestrator's crash-loop backoff slows that down.

``AckPolicy.MANUAL`` is the other accepted policy, for handlers that batch work and commit
themselves (``await msg.ack()`` after their effects are durable). ``ACK_FIRST`` (auto-commit,
at-most-once), ``ACK`` and ``REJECT_ON_ERROR`` (commit even on failure) lose events and are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from google.protobuf.message import Message

from services.common.codec import MessageTypeHeaderMiddleware, ProtobufCodec
from services.common.dlq import ConsumerGuard, DeadLetterPublisher, DlqLimit, Halt, Sleep
from services.common.retry import RetryPolicy
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames

if TYPE_CHECKING:
    from faststream._internal.types import BrokerMiddleware
    from faststream.kafka.publisher.usecase import DefaultPublisher

    from services.common.telemetry import Telemetry

AFTER_EFFECTS: Final = AckPolicy.NACK_ON_ERROR
"""Commit after the handler's effects are durable; on error, redeliver (see the module doc)."""

ALLOWED_ACK_POLICIES: Final = frozenset({AckPolicy.NACK_ON_ERROR, AckPolicy.MANUAL})

EXIT_HALTED: Final = 70
"""Exit status of a service whose consumer halted (EX_SOFTWARE): restart only after a look."""

# Redelivery waits at most 30 s, well inside max.poll.interval.ms (5 min), and halts after 25
# attempts on one record (at most ~10 minutes, ~5 on average with jitter) so that a lasting
# outage becomes a visible crash loop instead of a silent stall.
DEFAULT_REDELIVERY = RetryPolicy(base_delay=0.5, max_delay=30.0, max_attempts=25)


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
        client_id=f"{settings.client_id}-{service_name}",
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

    def topic(self, topic: Topic) -> str:
        """Physical name of ``topic`` in this deployment."""
        return self.topic_names(topic)

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
            raise ValueError("batch subscribers are not guarded; declare them on the broker (see dlq.py)")
        options.setdefault("auto_offset_reset", "earliest")
        subscriber = self.broker.subscriber(
            self.topic(topic),
            group_id=group_id or self.service_name,
            ack_policy=ack_policy,
            codec=ProtobufCodec(message_type),
            **options,
        )
        # Without batch=True faststream builds a DefaultSubscriber (or its concurrent subclass).
        assert isinstance(subscriber, DefaultSubscriber)
        return subscriber

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
    dead_letters = DeadLetterPublisher(broker.publish, topic_names, service_name=service_name)
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
    return ServiceKafka(broker, topic_names, service_name, guard, halt)


async def run_service(app: FastStream, halt: Halt) -> int:
    """Run ``app`` until SIGINT/SIGTERM or a halt; returns the process exit status."""
    halt.on_trip(lambda _error: app.exit())
    await app.run()
    if halt.error is not None:
        logging.getLogger(__name__).critical("service halted: %s", halt.error)
        return EXIT_HALTED
    return 0

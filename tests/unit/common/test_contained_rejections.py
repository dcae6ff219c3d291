"""A rejection a handler contained (InvalidEvent(contained=True)) is dead-lettered but not counted
by the service-wide circuit breaker; uncontained ones still trip it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord

from services.common.dlq import ConsumerGuard, DeadLetter, DeadLetterPublisher, DlqLimit, Halt
from services.common.errors import ConsumerHalted, InvalidEvent
from services.common.retry import RetryPolicy
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.unit

NAMES = TopicNames(load_topic_table(), prefix="unit.")
SOURCE = NAMES(Topic.APP_CHANGES)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(SOURCE, 0, offset, 0, 0, b"acme/partners/1", b"x", None, 15, 1, [])


def guard(sent: list[int]) -> ConsumerGuard:
    async def publish(letters: Sequence[DeadLetter]) -> None:
        sent.extend(int(letter.headers["duplex-original-offset"]) for letter in letters)

    return ConsumerGuard(
        dead_letters=DeadLetterPublisher(publish, NAMES, service_name="mapping"),
        service_name="mapping",
        limit=DlqLimit(max_invalid_ratio=0.5, max_consecutive_invalid=3, window=10, min_samples=4),
        redelivery=RetryPolicy(base_delay=0.0, max_delay=0.0, max_attempts=1, jitter=False),
        halt=Halt(),
    )


async def test_contained_rejections_are_dead_lettered_without_tripping_the_breaker() -> None:
    sent: list[int] = []
    g = guard(sent)
    for offset in range(20):
        await g.rejected(record(offset), InvalidEvent("QUARANTINED: pair", contained=True), None)
    assert sent == list(range(20))
    breaker = g.breaker(SOURCE)
    assert (breaker.consecutive_invalid, breaker.invalid_ratio, breaker.tripped) == (0, 0.0, None)
    assert g.halt.error is None


async def test_uncontained_rejections_still_halt_among_contained_ones() -> None:
    sent: list[int] = []
    g = guard(sent)
    offset = 0
    for contained in (False, True, False, True, False):
        await g.rejected(record(offset), InvalidEvent("bad", contained=contained), None)
        offset += 1
    # Contained ones neither reset nor add to the run: three uncontained in a row so far.
    assert g.breaker(SOURCE).consecutive_invalid == 3
    with pytest.raises(ConsumerHalted):
        await g.rejected(record(offset), InvalidEvent("bad"), None)
    assert g.halt.error is not None
    assert offset not in sent

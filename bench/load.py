"""What the isolation benchmarks share: sending their load from a process of their own, and counting
what arrived on a topic."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

T = TypeVar("T")
# (tenant, what to make) -> (record value, record key)
Make = Callable[[str, T], tuple[bytes, bytes]]


def produce(
    bootstrap_servers: str,
    topic: str,
    make: Make[T],
    items: Sequence[tuple[str, T]],
    per_second: float | None,
    chunk: int,
) -> None:
    """Publish ``make(tenant, item)`` for each item, in order, at once or ``per_second`` in chunks of
    ``chunk``. Meant to run in a process of its own (``make`` a module-level function), so that
    building and sending the load costs the measured service's event loop nothing."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
        await producer.start()
        try:
            events = [make(tenant, item) for tenant, item in items]
            step = max(1, len(events)) if per_second is None else chunk
            started = time.perf_counter()
            acks = []
            for first in range(0, len(events), step):
                acks += [await producer.send(topic, value, key=key) for value, key in events[first : first + step]]
                if per_second is not None:
                    await asyncio.sleep(max(0.0, started + (first + step) / per_second - time.perf_counter()))
            await asyncio.gather(*acks)
        finally:
            await producer.stop()

    asyncio.run(send())


async def end_offset(consumer: AIOKafkaConsumer, topic: str) -> int:
    """How many records ``topic`` holds in all (a sum of end offsets)."""
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
    return sum((await consumer.end_offsets(partitions)).values())


async def interleaved(rounds: int, cases: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, list[float]]:
    """Each case's figure in each of ``rounds`` rounds, the cases' order rotated by one every round.

    A ratio of two cases is only as good as the conditions they ran under: on a shared 2-core
    machine a later burst often runs faster than an earlier one (caches, the broker's page cache,
    the JIT-less planner settling), so cases measured one after the other carry that order in
    their ratio. Rotating puts every case in every position equally often; the median of the
    per-round ratios (see ``median_ratio``) then leaves the outlying rounds out."""
    figures: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            figures[name].append(await cases[name]())
    return figures


def median_ratio(over: list[float], under: list[float]) -> tuple[float, float, float]:
    """The median, lowest and highest of the per-round ratios ``over[i] / under[i]``."""
    ratios = [a / b for a, b in zip(over, under, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)

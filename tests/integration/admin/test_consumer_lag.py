"""The broker-side lag loop against the real broker: a group's committed offsets against the topic's end,
rising while its consumer is stopped; no series for a group the broker does not know; and the admin
API's process exporting it on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from services.admin.app import run
from services.admin.consumer_lag import ConsumerLagMonitor, group_name
from services.admin.settings import AdminSettings
from services.common.metrics import Metrics
from services.common.settings import KafkaSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GAUGE = "duplex_consumer_group_lag_messages"


async def produce(bootstrap: str, topic: str, count: int, partition: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(count):
            await producer.send_and_wait(topic, f"record-{n}".encode(), key=b"k", partition=partition)
    finally:
        await producer.stop()


@asynccontextmanager
async def group_member(bootstrap: str, group: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A member of ``group`` subscribed to ``topic``, as a service's subscriber is."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


def series(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["group"], sample.labels["topic"]): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == GAUGE
    }


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        # The broker offers no notification of offsets: asking it again is the only way.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def monitor(bootstrap: str, names: TopicNames) -> tuple[ConsumerLagMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=names.prefix)
    return ConsumerLagMonitor(kafka, names, metrics.consumer_group_lag), registry


async def test_lag_rises_with_the_backlog_and_keeps_rising_while_the_consumer_is_stopped(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    lag, registry = monitor(kafka_bootstrap, topic_names)
    group = group_name(topic_names.prefix, "writer")
    topic = topic_names(Topic.CRM_WRITES)
    try:
        # Nobody has consumed yet: the broker knows no writer group, so no series (not a 0 that
        # reads as "caught up").
        await produce(kafka_bootstrap, topic, 5)
        # A fresh broker creates its group coordinator's topic on the first question: until then it
        # answers "not available", a round the loop logs and retries.
        await eventually(lambda: lag.poll(within=30), "a round the broker answers")
        assert series(registry) == {}

        async with group_member(kafka_bootstrap, group, topic) as consumer:
            # A member that has committed nothing yet reads from the earliest: all 5 are behind.
            await eventually(lambda: _polled_to(lag, registry, (group, topic), 5), "a member without commits")
            await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "")})
            await eventually(lambda: _polled_to(lag, registry, (group, topic), 2), "lag after the commit")
            await produce(kafka_bootstrap, topic, 4)
            await eventually(lambda: _polled_to(lag, registry, (group, topic), 6), "lag after producing more")
        # The consumer stopped: its self-reported lag would freeze here; the broker's keeps rising.
        await produce(kafka_bootstrap, topic, 3, partition=1)
        await eventually(lambda: _polled_to(lag, registry, (group, topic), 9), "lag while stopped")
        await produce(kafka_bootstrap, topic, 2, partition=2)
        await eventually(lambda: _polled_to(lag, registry, (group, topic), 11), "lag while still stopped")
        # Only the groups the broker knows: the mapping and the resolver never ran here.
        assert set(series(registry)) == {(group, topic)}
    finally:
        await lag.close()


async def _polled_to(
    lag: ConsumerLagMonitor, registry: CollectorRegistry, key: tuple[str, str], expected: float
) -> bool:
    assert await lag.poll(within=30)
    return series(registry).get(key) == expected


async def test_a_broker_that_does_not_answer_keeps_the_last_figures(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    registry = CollectorRegistry()
    gauge = Metrics(registry).consumer_group_lag
    gauge.labels(group="g", topic="t").set(7)
    # Nothing listens on port 9 (discard): every request fails at once.
    lag = ConsumerLagMonitor(KafkaSettings(bootstrap_servers="127.0.0.1:9"), topic_names, gauge)
    assert not await lag.poll(within=30)
    assert series(registry) == {("g", "t"): 7}


async def test_the_admin_api_exports_the_lag_of_each_group(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    group = group_name(topic_names.prefix, "mapping")
    topic = topic_names(Topic.APP_CHANGES)
    await produce(kafka_bootstrap, topic, 4)
    registry = CollectorRegistry()
    telemetry = setup_telemetry(TelemetrySettings(), service_name="admin", install_global=False, registry=registry)
    settings = AdminSettings(
        postgres_dsn=fresh_database,
        port=0,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix),
        consumer_lag_interval_seconds=0.2,
    )
    async with group_member(kafka_bootstrap, group, topic) as consumer, run(settings, telemetry):
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "")})

        async def shows(expected: float) -> bool:
            return series(registry).get((group, topic)) == expected

        await eventually(lambda: shows(3), "the admin API's lag")
        # The same group's other topic, from its first record: nothing there yet.
        assert series(registry).get((group, topic_names(Topic.CRM_CHANGES))) == 0
        await produce(kafka_bootstrap, topic, 2)
        await eventually(lambda: shows(5), "the admin API's lag after producing more")
    telemetry.shutdown()


def lag_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "consumer-lag"]


async def test_the_lag_loop_can_be_turned_off(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    registry = CollectorRegistry()
    telemetry = setup_telemetry(TelemetrySettings(), service_name="admin", install_global=False, registry=registry)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    settings = AdminSettings(postgres_dsn=fresh_database, port=0, kafka=kafka, consumer_lag_enabled=False)
    async with run(settings, telemetry):
        assert lag_tasks() == []
    async with run(settings.model_copy(update={"consumer_lag_enabled": True}), telemetry):
        assert len(lag_tasks()) == 1
    # Closing the API stops the loop with it.
    assert lag_tasks() == []
    telemetry.shutdown()

"""Consumer-group lag as the broker sees it, for alerts and autoscaling.

Each consumer reports its own lag (``duplex_consumer_lag_messages``) after each event it handles, so
the figure freezes exactly when it matters: a stopped or stuck consumer reports nothing. This loop,
run by the admin API, asks the broker instead, every ``interval`` seconds: the committed offsets of
each Duplex consumer group (``<prefix><service>``, as ``services.common.kafka.ServiceKafka.group``
names them) and the end offsets of its topics' partitions, and sets
``duplex_consumer_group_lag_messages{group, topic}`` to their distance summed over the partitions.
Nothing consumes, so nothing the services do changes when it runs.

A partition the group has not committed on counts from its first retained record (the subscribers
start a new group at the earliest); a committed offset below the first retained record counts from
there too (the consumer resets to it). A group the broker does not know (never started, or its
offsets expired) has no series at all, rather than a 0 that would read as "caught up", and a series
whose group disappears is removed. When the broker cannot be asked, the last figures stay (a
warning is logged each round) rather than dropping to nothing, which would clear an alert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames

log = logging.getLogger(__name__)

# Each Kafka-consuming service and the topics it subscribes to (cdc-ingest consumes none: it reads
# Salesforce). tests/unit/admin/test_consumer_lag.py keeps this in step with the subscribers.
CONSUMER_GROUPS: Final[Mapping[str, tuple[Topic, ...]]] = {
    "mapping": (Topic.APP_CHANGES, Topic.CRM_CHANGES),
    "conflict-resolver": (Topic.MAPPED_CHANGES, Topic.WRITE_OUTCOMES),
    "writer": (Topic.CRM_WRITES,),
}
_REQUEST_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True)
class GroupLag:
    group: str
    # Physical topic name.
    topic: str
    messages: int


def topic_lag(
    partitions: Iterable[TopicPartition],
    committed: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> int:
    """Records between where the group would read next and the end, over ``partitions``."""
    total = 0
    for partition in partitions:
        start = beginnings.get(partition, 0)
        position = max(committed.get(partition, -1), start)
        total += max(0, ends.get(partition, 0) - position)
    return total


def group_name(prefix: str, service: str) -> str:
    """A service's consumer group, prefixed like its topics (as ``ServiceKafka.group``)."""
    return f"{prefix}{service}"


class ConsumerLagMonitor:
    """Measures the lag of ``groups`` at the broker and sets ``gauge``; see the module doc."""

    def __init__(
        self,
        kafka: KafkaSettings,
        names: TopicNames,
        gauge: Gauge,
        *,
        groups: Mapping[str, tuple[Topic, ...]] = CONSUMER_GROUPS,
    ) -> None:
        self._kafka = kafka
        self._gauge = gauge
        self._groups = {
            group_name(names.prefix, service): tuple(names(t) for t in topics) for service, topics in groups.items()
        }
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._shown: set[tuple[str, str]] = set()

    def _options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self._kafka.bootstrap_servers,
            "client_id": f"{self._kafka.client_id}-admin-lag",
            "request_timeout_ms": _REQUEST_TIMEOUT_MS,
            **client_options(self._kafka),
        }

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.close()
            admin = AIOKafkaAdminClient(**self._options())
            # No group: it only asks for offsets, never joins, commits or fetches.
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **self._options())
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _close(admin, consumer)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        await _close(admin, consumer)

    async def measure(self) -> list[GroupLag]:
        """The lag of every known group on each of its topics, read from the broker now."""
        admin, consumer = await self._clients()
        known = await self._known_groups(admin)
        topics = sorted({topic for group in known for topic in self._groups[group]})
        if not topics:
            return []
        described = await admin.describe_topics(topics)
        partitions: dict[str, list[TopicPartition]] = {
            topic["topic"]: [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
            for topic in described
            if topic["error_code"] == 0
        }
        every = [partition for listed in partitions.values() for partition in listed]
        beginnings = await consumer.beginning_offsets(every)
        ends = await consumer.end_offsets(every)
        lags = []
        for group in sorted(known):
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {partition: meta.offset for partition, meta in offsets.items()}
            for topic in self._groups[group]:
                if topic in partitions:
                    messages = topic_lag(partitions[topic], committed, beginnings, ends)
                    lags.append(GroupLag(group, topic, messages))
        return lags

    async def _known_groups(self, admin: AIOKafkaAdminClient) -> set[str]:
        # ListGroups names every group with members or committed offsets, which is what "known" means
        # here. (DescribeGroups would say the same per group, but aiokafka 0.14 cannot decode the
        # answer of a Kafka 4 broker.)
        listed = {str(listing[0]) for listing in await admin.list_consumer_groups()}
        return listed & set(self._groups)

    def show(self, lags: Iterable[GroupLag]) -> None:
        """Sets the gauge to ``lags`` and removes the series of groups or topics no longer measured."""
        shown = set()
        for lag in lags:
            self._gauge.labels(group=lag.group, topic=lag.topic).set(lag.messages)
            shown.add((lag.group, lag.topic))
        for gone in self._shown - shown:
            self._gauge.remove(*gone)
        self._shown = shown

    async def poll(self, within: float) -> bool:
        """One round, bounded by ``within`` seconds: measure and show. False (logged, figures kept)
        when the broker did not answer."""
        try:
            async with asyncio.timeout(within):
                lags = await self.measure()
        except (KafkaError, OSError, TimeoutError) as error:
            # The clients are rebuilt next round: a client that lost the cluster may not recover alone.
            await self.close()
            log.warning(
                "consumer lag not measured: the broker did not answer",
                extra={"error": type(error).__name__, "bootstrap_servers": self._kafka.bootstrap_servers},
            )
            return False
        self.show(lags)
        return True

    async def run_forever(self, interval: float) -> None:
        """Polls every ``interval`` seconds until cancelled, then closes its clients."""
        try:
            while True:
                await self.poll(within=interval + _REQUEST_TIMEOUT_MS / 1000)
                await asyncio.sleep(interval)
        finally:
            await self.close()


async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
    # Each closed even when the other fails to: a half-open client leaks its connections.
    try:
        if consumer is not None:
            await consumer.stop()
    except (KafkaError, OSError) as error:
        log.debug("stopping the lag consumer failed", extra={"error": type(error).__name__})
    try:
        if admin is not None:
            await admin.close()
    except (KafkaError, OSError) as error:
        log.debug("closing the lag admin client failed", extra={"error": type(error).__name__})

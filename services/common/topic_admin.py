"""Creating and deleting the topic table's topics on a broker (local stack, tests, and ``duplex topics apply``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from services.common.topics import TopicNames, TopicSpec, TopicTable

_ADMIN_TIMEOUT_MS = 30_000


def all_led(topics: list[dict[str, Any]]) -> bool:
    """Whether every topic in a metadata answer is error-free and each partition has a leader."""
    return all(
        topic["error_code"] == 0
        and all(partition["error_code"] == 0 and partition["leader"] >= 0 for partition in topic["partitions"])
        for topic in topics
    )


def topic_configs(spec: TopicSpec, replication_factor: int = 1) -> dict[str, str]:
    """The per-topic broker configs a table row asks for.

    With three replicas or more, a write is acknowledged (acks=all) only once a majority has it
    (``min.insync.replicas``): it survives the loss of any one broker, and the topic still takes
    writes while one is down. Below three, the broker's default (1) stands.
    """
    configs = {"retention.ms": str(spec.retention_ms), "cleanup.policy": spec.cleanup_policy}
    if replication_factor >= 3:
        configs["min.insync.replicas"] = str(replication_factor // 2 + 1)
    return configs


def new_topics(table: TopicTable, prefix: str = "", replication_factor: int = 1) -> list[NewTopic]:
    """One NewTopic per table row, under its physical (prefixed) name."""
    names = TopicNames(table, prefix)
    return [
        NewTopic(
            name=names(topic),
            num_partitions=spec.partitions,
            replication_factor=replication_factor,
            topic_configs=topic_configs(spec, replication_factor),
        )
        for topic, spec in table.topics.items()
    ]


async def ensure_topics(
    bootstrap_servers: str,
    table: TopicTable,
    prefix: str = "",
    replication_factor: int = 1,
    *,
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create every topic of ``table`` that is missing; return the names created.

    Existing topics are left as they are (so running it twice is fine). One broker locally
    takes replication 1; a production cluster wants 3. ``options`` are the clients' security
    (:func:`services.common.kafka_security.client_options`), as in every function here.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=_ADMIN_TIMEOUT_MS,
        client_id="duplex-topic-admin",
        **(options or {}),
    )
    await admin.start()
    try:
        wanted = new_topics(table, prefix, replication_factor)
        response = await admin.create_topics(wanted, timeout_ms=_ADMIN_TIMEOUT_MS)
        await _wait_for_leaders(admin, [topic.name for topic in wanted])
    finally:
        await admin.close()
    await wait_until_served(bootstrap_servers, [topic.name for topic in wanted], options=options)
    created = []
    for row in response.to_object()["topic_errors"]:
        code = row["error_code"]
        if code == 0:
            created.append(row["topic"])
        elif code != TopicAlreadyExistsError.errno:
            error = for_code(code)
            msg = f"creating topic {row['topic']} failed: {error.__name__} {row.get('error_message')}"
            raise error(msg)
    return sorted(created)


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], within: float = 30.0) -> None:
    """Wait until every partition of ``names`` has a leader, so the first produce does not bounce."""
    deadline = time.monotonic() + within
    while not all_led(await admin.describe_topics(names)):
        if time.monotonic() > deadline:
            msg = f"partitions of {names} still have no leader after {within:.0f}s"
            raise TimeoutError(msg)
        await asyncio.sleep(0.1)


async def partitions_of(
    bootstrap_servers: str, names: Iterable[str] | None, *, client_id: str, options: Mapping[str, Any] | None = None
) -> list[TopicPartition]:
    """Every partition of the topics ``names`` (all topics if None) that exist, as the cluster says."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id, **(options or {}))
    await admin.start()
    try:
        described = await admin.describe_topics(None if names is None else list(names))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in topic["partitions"]
    ]


async def wait_until_served(
    bootstrap_servers: str,
    names: Iterable[str] | None = None,
    within: float = 60.0,
    *,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Return once the broker answers offset requests for every partition of ``names`` (all topics if None).

    Metadata names a leader before that leader serves the partition (it still creates or loads
    the log); asking for end offsets is the first thing every consumer does.
    """
    async with asyncio.timeout(within):
        partitions = await partitions_of(
            bootstrap_servers, names, client_id="duplex-topic-admin-probe", options=options
        )
        if not partitions:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            client_id="duplex-topic-admin-probe",
            request_timeout_ms=int(within * 1000),
            **(options or {}),
        )
        await consumer.start()
        try:
            await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()


async def delete_topics(
    bootstrap_servers: str, names: Iterable[str], *, options: Mapping[str, Any] | None = None
) -> None:
    """Delete ``names``; topics already gone are fine."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=_ADMIN_TIMEOUT_MS,
        client_id="duplex-topic-admin",
        **(options or {}),
    )
    await admin.start()
    try:
        response = await admin.delete_topics(list(names), timeout_ms=_ADMIN_TIMEOUT_MS)
    finally:
        await admin.close()
    for topic, code in response.topic_error_codes:
        if code not in (0, UnknownTopicOrPartitionError.errno):
            error = for_code(code)
            msg = f"deleting topic {topic} failed: {error.__name__}"
            raise error(msg)

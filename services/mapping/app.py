"""Composition root: settings in, the mapping service consuming both sides' changes out.

Every resource is opened in order on one exit stack (the pool, then the broker with its
subscribers) and closed in reverse order, so the pool outlives every batch the broker hands over.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from services.common.config_provider import TenantConfigs
from services.common.contract import RecordChanged
from services.common.db import Pool, create_pool, database_ready
from services.common.errors import InvalidEvent
from services.common.kafka import consuming, make_kafka
from services.common.service import Running
from services.common.sync_log import SyncLog
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.mapping.contract import changes_of, keyed
from services.mapping.describes import CrmDescribes
from services.mapping.events import MappedEvent
from services.mapping.mapper import Mapper, Publish
from services.mapping.repository import BatchLinkRepository
from services.mapping.settings import MappingSettings


def postgres_mapper(
    pool: Pool,
    publish: Publish,
    *,
    service_name: str,
    check_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Mapper:
    """The mapper over ``pool``'s database: links, configurations, describes and the sync log.

    Configurations and describes are re-read at most every ``check_seconds`` (by ``clock``).
    """
    return Mapper(
        pool,
        links=BatchLinkRepository,
        configs=TenantConfigs(check_seconds, clock=clock),
        describes=CrmDescribes(check_seconds, clock=clock),
        sync_log=SyncLog(service_name),
        publish=publish,
    )


@asynccontextmanager
async def run(settings: MappingSettings, telemetry: Telemetry | None = None) -> AsyncIterator[Running]:
    """The mapping service consuming until the block exits."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(create_pool(settings.postgres))
        topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
        kafka = make_kafka(
            settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry
        )
        mapped_changes = kafka.sender(Topic.MAPPED_CHANGES)

        async def publish(events: Sequence[MappedEvent]) -> None:
            await mapped_changes.publish_all(keyed(events))

        mapper = postgres_mapper(
            pool, publish, service_name=settings.service_name, check_seconds=settings.config_check_seconds
        )

        async def on_changes(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
            return await mapper.handle_batch(changes_of(events))

        # Both sides' changes go through the same handler, in batches; each topic is its own
        # subscription so that a burst on one side does not wait behind the other's partitions.
        kafka.batch_subscriber(Topic.APP_CHANGES, message_type=RecordChanged, handler=on_changes)
        kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=on_changes)
        yield await stack.enter_async_context(consuming(kafka, ready=(database_ready(pool),)))

"""Composition root: settings in, the mapping service consuming both sides' changes out.

Every resource is opened in order on one exit stack (the pool, then the broker with its
subscribers) and closed in reverse order, so the pool outlives every batch the broker hands over.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from services.common.change import Side
from services.common.config_provider import TenantConfigs
from services.common.contract import RecordChanged
from services.common.db import Pool, create_pool, database_ready
from services.common.errors import InvalidEvent
from services.common.kafka import Batch, BatchHandler, consuming, make_kafka
from services.common.metrics import Metrics
from services.common.service import Running
from services.common.sync_log import SyncLog
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.mapping.contract import changes_of, keyed
from services.mapping.describes import CrmDescribes
from services.mapping.events import MappedEvent
from services.mapping.mapper import DEFAULT_MAX_FUTURE_SKEW, Mapper, Publish
from services.mapping.quarantine import QuarantineLimit, Quarantines
from services.mapping.repository import BatchLinkRepository
from services.mapping.settings import MappingSettings


def postgres_mapper(
    pool: Pool,
    publish: Publish,
    *,
    service_name: str,
    check_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    quarantines: Quarantines | None = None,
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
    metrics: Metrics | None = None,
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
        quarantines=quarantines,
        max_future_skew=max_future_skew,
        metrics=metrics,
        service_name=service_name,
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

        limit = QuarantineLimit(
            max_invalid_ratio=settings.quarantine_invalid_ratio,
            window=settings.quarantine_window,
            min_samples=settings.quarantine_min_samples,
            cool_off_seconds=settings.quarantine_cool_off_seconds,
        )
        mapper = postgres_mapper(
            pool,
            publish,
            service_name=settings.service_name,
            check_seconds=settings.config_check_seconds,
            # One for both topics: a pair's changes from either side count together.
            quarantines=Quarantines(limit),
            max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
            metrics=telemetry.metrics if telemetry else None,
        )

        def on_changes(side: Side) -> BatchHandler[RecordChanged]:
            async def handle(events: Batch[RecordChanged]) -> Mapping[int, InvalidEvent]:
                return await mapper.handle_batch(changes_of(events, events.keys, side))

            return handle

        # Both sides' changes go through the same mapper, in batches; each topic is its own
        # subscription so that a burst on one side does not wait behind the other's partitions.
        kafka.batch_subscriber(Topic.APP_CHANGES, message_type=RecordChanged, handler=on_changes(Side.APP))
        kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=on_changes(Side.CRM))
        yield await stack.enter_async_context(consuming(kafka, ready=(database_ready(pool),)))

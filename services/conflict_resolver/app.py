"""Composition root: settings in, a running conflict-resolver out.

Opened in order on one exit stack: the pool, the resolver over its PostgreSQL store, its two
batch subscribers, the broker, then the housekeeping (the release of changes and outputs held by
pauses, the sync log's partitions kept to its retention, the pruning of applied event ids); closed
in reverse, so the broker has stopped before the pool closes under a batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from services.common.config_provider import TenantConfigs
from services.common.db import create_pool, database_ready
from services.common.kafka import consuming, make_kafka
from services.common.pauses import Way
from services.common.service import Running, in_background
from services.common.sync_log_retention import keeping
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.conflict_resolver.contract import ChangeMapped, WriteSettled
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.holding import releasing
from services.conflict_resolver.pruning import keep_for, pruning
from services.conflict_resolver.repository import PostgresStore
from services.conflict_resolver.settings import ResolverSettings


@asynccontextmanager
async def run(settings: ResolverSettings, telemetry: Telemetry | None = None) -> AsyncIterator[Running]:
    """The resolver consuming mapped changes and write outcomes until the block exits."""
    topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(create_pool(settings.postgres))
        # The resolver asks only for given mapping versions, which never change: nothing goes stale.
        configs = TenantConfigs(max_staleness=0.0, versions=settings.config_cache_size)
        publish = {
            Way.TO_CRM: kafka.sender(Topic.CRM_WRITES).publish_all,
            Way.TO_APP: kafka.sender(Topic.APP_UPDATES).publish_all,
        }
        resolver = Resolver(
            PostgresStore(pool, configs),
            publish_crm=publish[Way.TO_CRM],
            publish_app=publish[Way.TO_APP],
            service_name=settings.service_name,
            metrics=telemetry.metrics if telemetry else None,
            max_output_size=settings.kafka.max_request_size,
        )
        kafka.batch_subscriber(Topic.MAPPED_CHANGES, message_type=ChangeMapped, handler=resolver.on_mapped_batch)
        kafka.batch_subscriber(Topic.WRITE_OUTCOMES, message_type=WriteSettled, handler=resolver.on_settled_batch)
        running = await stack.enter_async_context(consuming(kafka, ready=(database_ready(pool),)))
        release = releasing(
            pool, publish, settings.service_name, settings.release_interval_seconds, resolver.release_held
        )
        in_background(stack, release, "release-held")
        retention = keeping(pool, settings.sync_log_retention_days, settings.sync_log_maintenance_interval_seconds)
        in_background(stack, retention, "sync-log-retention")
        keep = keep_for(topic_names.table)
        if keep is not None:
            in_background(stack, pruning(pool, keep, settings.prune_interval_seconds), "prune-applied-events")
        yield running

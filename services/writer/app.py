"""Composition root: settings in, a running writer out.

Opened in order on one exit stack, and closed in reverse: the pool, the HTTP client for
Salesforce, the governor's channel (unless a budget is given), the Kafka broker, and the
:class:`~services.writer.consumer.CommandConsumer`'s committer. So on the way out the consumer
shuts down first (module doc of :mod:`services.writer.consumer`: its commit protocol and its
shutdown order), then the broker stops, then the channel, the client and the pool close.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import httpx

from services.common.config_provider import TenantConfigs
from services.common.connections import Sessions
from services.common.db import create_pool, database_ready
from services.common.governor_client import GovernorBudget
from services.common.kafka import consuming, make_kafka
from services.common.salesforce import CallBudget, SecretResolver, env_secrets
from services.common.service import Running
from services.common.settings import environment
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.common.vault import Keyring, Vault
from services.writer.consumer import CommandConsumer
from services.writer.inflight import InFlight
from services.writer.orgs import Orgs
from services.writer.repository import PostgresAppliedVersions, PostgresParkStore
from services.writer.settings import WriterSettings
from services.writer.settle import Settlement
from services.writer.tenant import TenantOptions, TenantWriters


def _tenant_options(settings: WriterSettings) -> TenantOptions:
    return TenantOptions(
        window=timedelta(milliseconds=settings.batch_window_ms),
        max_wait=timedelta(milliseconds=settings.batch_max_wait_ms),
        bulk_threshold=settings.bulk_threshold,
        bulk_max_records=settings.bulk_max_records,
        concurrency=settings.tenant_concurrency,
        max_record_attempts=settings.max_record_attempts,
    )


@asynccontextmanager
async def run(
    settings: WriterSettings,
    telemetry: Telemetry | None = None,
    *,
    secrets: SecretResolver | None = None,
    budget: CallBudget | None = None,
) -> AsyncIterator[Running]:
    """The writer consuming and writing until the block exits (then drained and closed).

    ``secrets`` resolve the tenants' Salesforce secrets (default: from the environment, where
    Kubernetes Secrets arrive); ``budget`` stands in for the rate-limit governor.
    """
    metrics = telemetry.metrics if telemetry else None
    names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=names, telemetry=telemetry)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(create_pool(settings.postgres))
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.salesforce_ca_file) if settings.salesforce_ca_file else True
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(verify=verify, timeout=settings.salesforce_timeout_seconds)
        )
        if budget is None:
            budget, channel = GovernorBudget.connect(
                settings.governor_target,
                settings.governor_link,
                max_wait=timedelta(seconds=settings.governor_max_wait_seconds),
            )
            stack.push_async_callback(channel.close, None)
        policy = settings.policy.policy()
        resolve = env_secrets(environment(), policy=policy) if secrets is None else secrets
        vault = None if settings.vault is None else Vault(pool, Keyring.from_settings(settings.vault))
        sessions = Sessions(
            pool,
            vault=vault,
            service=settings.service_name,
            http=http,
            secrets=resolve,
            policy=policy,
            metrics=metrics,
        )
        orgs = Orgs(
            TenantConfigs(max_staleness=settings.config_ttl_seconds),
            pool,
            secrets=resolve,
            budget=budget,
            http=http,
            metrics=metrics,
            sessions=sessions,
        )
        inflight = InFlight()
        settlement = Settlement(
            publish=kafka.broker.publish,
            outcomes=kafka.sender(Topic.WRITE_OUTCOMES).publish_all,
            dead_letter_topic=names(names.dlq_of(Topic.CRM_WRITES)),
            database=pool,
            inflight=inflight,
            metrics=metrics,
        )
        tenants = TenantWriters(
            resources=orgs.resources,
            settler=settlement,
            versions=PostgresAppliedVersions(pool),
            deliveries=inflight,
            options=_tenant_options(settings),
        )
        consumer = CommandConsumer(
            kafka,
            inflight=inflight,
            tenants=tenants,
            store=PostgresParkStore(pool),
            max_pending=settings.max_pending_per_tenant,
            park_after=settings.park_after_seconds,
            commit_interval=settings.commit_interval_ms / 1000,
            shutdown_grace=settings.shutdown_grace_seconds,
            metrics=metrics,
        )
        running = await stack.enter_async_context(consuming(kafka, ready=(database_ready(pool),)))
        await stack.enter_async_context(consumer.running())
        yield running

"""Composition root: settings in, cdc-ingest (a FastStream app with no subscribers) out.

cdc-ingest consumes Salesforce, not Kafka: the FastStream app owns the producer's lifecycle, and
the supervisor (tenant leases → one worker per tenant) runs from start-up to shutdown.

The rate-limit-governor: every REST call of a tenant goes through ``budget_for(tenant_id)``, a
:class:`CallBudget`. By default (as in production) that is the governor's gRPC client
(:class:`~services.common.governor_client.GovernorBudget`) at ``settings.governor_target``: each
call is granted first (backfill reads at backfill priority, everything else live) and Salesforce's
reported usage is passed on. The channel is opened at start-up and closed at shutdown. Tests and
benchmarks may pass their own ``budget_for`` (e.g. :func:`unlimited_budgets`) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import httpx
from faststream import FastStream

from services.cdc_ingest.describe import field_summary
from services.cdc_ingest.pubsub import ClientTokens, PubSubClient, open_channel
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import KafkaSink
from services.cdc_ingest.store import Store
from services.cdc_ingest.supervisor import Supervisor
from services.cdc_ingest.worker import TenantWorker
from services.common.governor_client import GovernorBudget
from services.common.kafka import ServiceKafka, make_kafka
from services.common.salesforce import CallBudget, SalesforceClient, UnlimitedBudget, env_secrets
from services.common.telemetry import Telemetry
from services.common.tenant_config import load_current
from services.common.topics import TopicNames, load_topic_table

BudgetFor = Callable[[str], CallBudget]


@dataclass
class CdcIngestApp:
    app: FastStream
    kafka: ServiceKafka
    # Filled at start-up; tests look at it.
    state: dict[str, Any] = field(default_factory=dict)


def unlimited_budgets() -> BudgetFor:
    """No governor: every call is allowed (and counted per tenant). For tests and benchmarks only."""
    budgets: dict[str, CallBudget] = {}
    return lambda tenant_id: budgets.setdefault(tenant_id, UnlimitedBudget())


def _same_for_all(budget: CallBudget) -> BudgetFor:
    return lambda _tenant_id: budget


def build_app(
    settings: CdcIngestSettings,
    *,
    telemetry: Telemetry | None = None,
    environ: Mapping[str, str] | None = None,
    budget_for: BudgetFor | None = None,
) -> CdcIngestApp:
    topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry)
    sink = KafkaSink(kafka)
    secrets = env_secrets(dict(os.environ if environ is None else environ))
    metrics = telemetry.metrics if telemetry else None
    service = CdcIngestApp(FastStream(kafka.broker), kafka)
    state = service.state

    async def start() -> None:
        postgres = settings.postgres
        pool = await asyncpg.create_pool(
            dsn=postgres.dsn.get_secret_value(), min_size=postgres.pool_min_size, max_size=postgres.pool_max_size
        )
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
        )
        http = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(60.0, connect=10.0))
        channel = open_channel(settings.pubsub_target, settings.ca_file)
        store = Store(pool, settings.replica_id)
        state.update(pool=pool, http=http, channel=channel, store=store)
        budgets = budget_for
        if budgets is None:
            # One client serves every tenant: each request names its tenant.
            governed, governor = GovernorBudget.connect(
                settings.governor_target, max_wait=timedelta(seconds=settings.governor_max_wait_seconds)
            )
            state.update(governor=governor)
            budgets = _same_for_all(governed)

        async def run_tenant(tenant_id: str) -> None:
            config = await load_current(pool, tenant_id)
            client = SalesforceClient(
                tenant_id,
                config.spec.salesforce,
                secrets=secrets,
                budget=budgets(tenant_id),
                http=http,
                metrics=metrics,
            )

            async def pubsub_for(org_id: str) -> PubSubClient:
                return PubSubClient(channel, ClientTokens(client), org_id)

            async def described(entity: str, describe: Mapping[str, Any]) -> None:
                await store.save_object_fields(tenant_id, entity, field_summary(describe["fields"]))

            worker = TenantWorker(
                tenant_id=tenant_id,
                config=config,
                settings=settings,
                rest=SalesforceRest(client, on_describe=described),
                pubsub_factory=pubsub_for,
                store=store,
                sink=sink,
                metrics=metrics,
            )
            state.setdefault("workers", {})[tenant_id] = worker
            await worker.run()

        supervisor = Supervisor(settings, store, run_tenant)
        state["supervisor"] = supervisor
        state["supervisor_task"] = asyncio.create_task(supervisor.run(), name="cdc-supervisor")

    async def stop() -> None:
        task: asyncio.Task[None] | None = state.pop("supervisor_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channel: grpc.aio.Channel | None = state.pop("channel", None)
        if channel is not None:
            await channel.close(grace=None)
        governor: grpc.aio.Channel | None = state.pop("governor", None)
        if governor is not None:
            await governor.close(grace=None)
        http: httpx.AsyncClient | None = state.pop("http", None)
        if http is not None:
            await http.aclose()
        pool = state.pop("pool", None)
        if pool is not None:
            await pool.close()

    service.app.after_startup(start)
    service.app.on_shutdown(stop)
    return service

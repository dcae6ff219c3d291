"""Composition root: settings in, a running cdc-ingest out.

cdc-ingest consumes Salesforce, not Kafka: it has no subscribers, and the broker runs only for its
producer. Every resource is opened in order on one exit stack (the pool, the HTTP client, the
Pub/Sub channel, the governor's channel, the producer), then the supervisor (tenant leases → one
worker per tenant) runs until the block exits; everything closes in reverse order, the supervisor
first (it hands its leases back while the pool is still open).

The rate-limit-governor: every REST call of a tenant goes through ``budget_for(tenant_id)``, a
:class:`CallBudget`. By default (as in production) that is the governor's gRPC client
(:class:`~services.common.governor_client.GovernorBudget`) at ``settings.governor_target``: each
call is granted first (backfill reads at backfill priority, everything else live) and Salesforce's
reported usage is passed on. Tests and benchmarks may pass their own ``budget_for`` (e.g.
:func:`unlimited_budgets`) instead, and then no channel to the governor is opened.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx

from services.cdc_ingest.pubsub import ClientTokens, PubSubClient, open_channel
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.schema_schedule import SchemaSchedule
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import KafkaSink
from services.cdc_ingest.store import Store
from services.cdc_ingest.supervisor import Supervisor
from services.cdc_ingest.worker import TenantWorker
from services.common.connections import Sessions
from services.common.db import create_pool, database_ready
from services.common.governor_client import GovernorBudget
from services.common.kafka import consuming, make_kafka
from services.common.salesforce import CallBudget, SalesforceClient, UnlimitedBudget, env_secrets
from services.common.schema import crm_object
from services.common.schema_refresh import ClientSchemaReader, record_drift
from services.common.schema_store import save_described
from services.common.service import Running, in_background
from services.common.settings import environment
from services.common.telemetry import Telemetry
from services.common.tenant_config import load_current
from services.common.topics import TopicNames, load_topic_table
from services.common.vault import Keyring, Vault

BudgetFor = Callable[[str], CallBudget]


@dataclass(frozen=True, kw_only=True)
class RunningCdcIngest(Running):
    supervisor: Supervisor
    # The latest worker started for each tenant, kept after it stops (tests look at it).
    workers: Mapping[str, TenantWorker]


def unlimited_budgets() -> BudgetFor:
    """No governor: every call is allowed (and counted per tenant). For tests and benchmarks only."""
    budgets: dict[str, CallBudget] = {}
    return lambda tenant_id: budgets.setdefault(tenant_id, UnlimitedBudget())


def _same_for_all(budget: CallBudget) -> BudgetFor:
    return lambda _tenant_id: budget


@asynccontextmanager
async def run(
    settings: CdcIngestSettings,
    telemetry: Telemetry | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    budget_for: BudgetFor | None = None,
) -> AsyncIterator[RunningCdcIngest]:
    """cdc-ingest serving its tenants until the block exits; tenants' secrets come from ``environ``
    (the process environment when None)."""
    topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry)
    sink = KafkaSink(kafka, max_request_size=settings.kafka.max_request_size)
    policy = settings.policy.policy()
    secrets = env_secrets(environment() if environ is None else dict(environ), policy=policy)
    metrics = telemetry.metrics if telemetry else None
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(create_pool(settings.postgres))
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(60.0, connect=10.0))
        )
        vault = None if settings.vault is None else Vault(pool, Keyring.from_settings(settings.vault))
        sessions = Sessions(
            pool,
            vault=vault,
            service=settings.service_name,
            http=http,
            secrets=secrets,
            policy=policy,
            metrics=metrics,
        )
        channel = open_channel(settings.pubsub_target, settings.ca_file)
        stack.push_async_callback(channel.close, None)
        budgets = budget_for
        if budgets is None:
            # One client serves every tenant: each request names its tenant.
            governed, governor = GovernorBudget.connect(
                settings.governor_target,
                settings.governor_link,
                max_wait=timedelta(seconds=settings.governor_max_wait_seconds),
            )
            stack.push_async_callback(governor.close, None)
            budgets = _same_for_all(governed)
        producing = await stack.enter_async_context(consuming(kafka, ready=(database_ready(pool),)))
        store = Store(pool, settings.replica_id)
        workers: dict[str, TenantWorker] = {}

        async def run_tenant(tenant_id: str) -> None:
            config = await load_current(pool, tenant_id)
            client = SalesforceClient(
                tenant_id,
                config.spec.salesforce,
                secrets=secrets,
                budget=budgets(tenant_id),
                http=http,
                metrics=metrics,
                sessions=sessions,
            )

            async def pubsub_for(org_id: str) -> PubSubClient:
                return PubSubClient(channel, ClientTokens(client), org_id)

            async def described(entity: str, describe: Mapping[str, Any]) -> None:
                # Each describe is a schema version too: changes made while no worker ran are caught here.
                async with pool.acquire() as db:
                    changes = await save_described(
                        db,
                        tenant_id,
                        entity,
                        crm_object(describe),
                        cdc_selected=None,
                        describe_fields=describe["fields"],
                    )
                    await record_drift(db, config, changes, service=settings.service_name, metrics=metrics)

            worker = TenantWorker(
                tenant_id=tenant_id,
                config=config,
                settings=settings,
                rest=SalesforceRest(client, on_describe=described),
                pubsub_factory=pubsub_for,
                store=store,
                sink=sink,
                metrics=metrics,
                schema_schedule=SchemaSchedule(
                    pool, config, ClientSchemaReader(client), service=settings.service_name, metrics=metrics
                ),
            )
            workers[tenant_id] = worker
            await worker.run()

        supervisor = Supervisor(settings, store, run_tenant)
        in_background(stack, supervisor.run(), "cdc-supervisor")
        yield RunningCdcIngest(
            health=producing.health,
            halt=producing.halt,
            supervisor=supervisor,
            workers=workers,
        )

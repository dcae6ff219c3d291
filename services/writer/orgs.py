"""Each tenant's Salesforce org as the writer reaches it: an executor and the ingestion mode,
from the tenant's current configuration."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from services.common.config_provider import TenantConfigs
from services.common.connections import Sessions
from services.common.metrics import Metrics
from services.common.salesforce import CallBudget, SalesforceClient, SecretResolver
from services.common.tenant_config import QueryConnection, SalesforceSpec, StoredConfig
from services.writer.batching import Ingestion
from services.writer.executor import BatchExecutor
from services.writer.tenant import TenantResources


@dataclass(frozen=True)
class _Org:
    config: StoredConfig
    resources: TenantResources


class Orgs:
    """The tenants' :class:`TenantResources`, following their configuration."""

    def __init__(
        self,
        configs: TenantConfigs,
        database: QueryConnection,
        *,
        secrets: SecretResolver,
        budget: CallBudget,
        http: httpx.AsyncClient,
        metrics: Metrics | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self._configs = configs
        self._database = database
        self._secrets = secrets
        self._budget = budget
        self._http = http
        self._metrics = metrics
        self._sessions = sessions
        self._orgs: dict[str, _Org] = {}
        # One reader per tenant: two batches starting at once must not log in to the org twice.
        self._locks: dict[str, asyncio.Lock] = {}

    async def resources(self, tenant_id: str) -> TenantResources:
        """The tenant's executor and ingestion mode; :class:`TenantNotFoundError` when it has no configuration."""
        async with self._locks.setdefault(tenant_id, asyncio.Lock()):
            stored = await self._configs.require_current(self._database, tenant_id)
            org = self._orgs.get(tenant_id)
            if org is not None and org.config.version == stored.version:
                return org.resources
            spec = stored.config.spec.salesforce
            if org is not None and org.config.config.spec.salesforce == spec:
                # Same connection settings: keep the client and its session.
                executor = org.resources.executor
            else:
                executor = self._executor(tenant_id, spec)
            resources = TenantResources(executor, Ingestion(stored.config.spec.sync.backfill.ingestion.value))
            self._orgs[tenant_id] = _Org(stored, resources)
            return resources

    def _executor(self, tenant_id: str, spec: SalesforceSpec) -> BatchExecutor:
        client = SalesforceClient(
            tenant_id,
            spec,
            secrets=self._secrets,
            budget=self._budget,
            http=self._http,
            metrics=self._metrics,
            sessions=self._sessions,
        )
        return BatchExecutor(client)

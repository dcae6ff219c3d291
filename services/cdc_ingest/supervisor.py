"""Which tenants this replica serves: Postgres leases with expiry, renewed while served.

Every ``lease_renew_seconds`` the supervisor
1. heartbeats the replica (``cdc_replicas``) and counts the live replicas;
2. renews its leases; a tenant whose lease could not be renewed is stopped at once;
3. aims for its fair share, ``ceil(tenants / live replicas)``: it takes free or expired leases
   (a dead replica's tenants, once their lease expires) up to the share, and hands back leases
   above it (stopping the worker first), so that a replica that joins gets work;
4. (re)starts a worker for each held tenant without a running one (a worker that crashed is
   restarted on the next round, which also paces crash loops).

Two replicas can never both checkpoint a tenant: every progress write is fenced by the lease
(see :mod:`services.cdc_ingest.store`). On shutdown the leases are released so that another
replica takes over without waiting for the expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import Store

log = logging.getLogger(__name__)

# Builds and runs one tenant's worker until it is cancelled (or fails).
RunTenant = Callable[[str], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(self, settings: CdcIngestSettings, store: Store, run_tenant: RunTenant) -> None:
        self.settings = settings
        self.store = store
        self._run_tenant = run_tenant
        self.workers: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.rebalance()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("lease round failed")
                await asyncio.sleep(self.settings.lease_renew_seconds)
        finally:
            await self.stop_all()

    async def rebalance(self) -> None:
        ttl = self.settings.lease_ttl_seconds
        live = await self.store.heartbeat(ttl)
        tenants = list(self.settings.tenants) or await self.store.configured_tenants()
        held = set(await self.store.renew(list(self.workers), ttl)) | set(await self.store.held())
        for tenant_id in [t for t in self.workers if t not in held]:
            log.warning("lease lost, stopping tenant", extra={"tenant_id": tenant_id})
            await self._stop(tenant_id)
        share = math.ceil(len(tenants) / max(live, 1)) if tenants else 0
        for tenant_id in tenants:
            if len(held) >= share:
                break
            if tenant_id not in held and await self.store.try_acquire(tenant_id, ttl):
                log.info("lease acquired", extra={"tenant_id": tenant_id})
                held.add(tenant_id)
        for tenant_id in sorted(held - set(tenants)):
            await self._hand_back(tenant_id, held)
        for tenant_id in sorted(held)[share:]:
            await self._hand_back(tenant_id, held)
        for tenant_id in sorted(held):
            task = self.workers.get(tenant_id)
            if task is not None and task.done():
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "tenant worker failed; restarting", exc_info=task.exception(), extra={"tenant_id": tenant_id}
                    )
                task = None
            if task is None:
                self.workers[tenant_id] = asyncio.create_task(self._run_tenant(tenant_id), name=f"tenant-{tenant_id}")

    async def _hand_back(self, tenant_id: str, held: set[str]) -> None:
        log.info("handing tenant back", extra={"tenant_id": tenant_id})
        await self._stop(tenant_id)
        await self.store.release(tenant_id)
        held.discard(tenant_id)

    async def _stop(self, tenant_id: str) -> None:
        task = self.workers.pop(tenant_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop_all(self) -> None:
        for tenant_id in list(self.workers):
            await self._stop(tenant_id)
            with contextlib.suppress(Exception):
                await self.store.release(tenant_id)

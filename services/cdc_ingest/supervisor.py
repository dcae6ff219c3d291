"""Which tenants this replica serves: Postgres leases with expiry, renewed while served.

Every ``lease_renew_seconds`` the supervisor
1. heartbeats the replica (``cdc_replicas``) and counts the live replicas;
2. renews its leases; a tenant whose lease could not be renewed is stopped at once;
3. aims for its fair share, ``ceil(tenants / live replicas)``: it takes free or expired leases
   (a dead replica's tenants, once their lease expires) up to the share, and hands back leases
   above it (stopping the worker first), so that a replica that joins gets work;
4. restarts the worker of a tenant whose configuration has a new version since it started (it
   resumes from its checkpoint, now syncing what the new version says);
5. (re)starts a worker for each held tenant without a running one (a worker that crashed is
   restarted on the next round, which also paces crash loops; one that stopped because the
   governor has no API budget for the tenant waits until the governor said budget returns; one
   that stopped because the tenant's Salesforce connection is unusable is restarted every round:
   one waiting for an admin, to connect it or to apply its configuration again, costs no call to
   Salesforce until then; one whose sign-in was refused tries again once a round).

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
from datetime import UTC, datetime
from typing import Any, TypeVar

from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import Store
from services.common.connections import ConnectionUnavailableError
from services.common.governor_client import BudgetUnavailable

log = logging.getLogger(__name__)

# Builds and runs one tenant's worker until it is cancelled (or fails).
RunTenant = Callable[[str], Coroutine[Any, Any, None]]
E = TypeVar("E", bound=BaseException)


class Supervisor:
    def __init__(
        self,
        settings: CdcIngestSettings,
        store: Store,
        run_tenant: RunTenant,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self._run_tenant = run_tenant
        self._clock = clock
        self.workers: dict[str, asyncio.Task[None]] = {}
        # Tenants whose worker stopped for want of API budget, and when the governor expects some.
        self.out_of_budget: dict[str, datetime] = {}
        # Tenants whose worker stopped because their connection is unusable, and why (said once).
        self.unconnected: dict[str, str] = {}
        # The configuration version current when each worker was started.
        self.versions: dict[str, int] = {}

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
        versions = await self.store.config_versions(sorted(held))
        for tenant_id, version in versions.items():
            task = self.workers.get(tenant_id)
            # A finished worker is restarted (and its end reported) below; one waiting for budget waits on.
            if task is None or task.done() or tenant_id in self.out_of_budget:
                continue
            if self.versions.get(tenant_id, version) != version:
                log.info("configuration changed, restarting tenant", extra={"tenant_id": tenant_id, "version": version})
                await self._stop(tenant_id)
        for tenant_id in sorted(held):
            task = self.workers.get(tenant_id)
            if task is not None and not task.done():
                self.unconnected.pop(tenant_id, None)
            if task is not None and task.done() and tenant_id not in self.out_of_budget:
                error = None if task.cancelled() else task.exception()
                budget = _out_of_budget(error)
                unusable = _only(ConnectionUnavailableError, error)
                if unusable:
                    # Expected until an admin acts or a sign-in succeeds again: a warning when the
                    # reason changes, no traceback, and a restart every round.
                    if self.unconnected.get(tenant_id) != unusable[0].reason:
                        log.warning(
                            "tenant's Salesforce connection is unusable; retrying every round",
                            extra={"tenant_id": tenant_id, "reason": unusable[0].reason, "err": str(unusable[0])},
                        )
                    self.unconnected[tenant_id] = unusable[0].reason
                elif budget is not None:
                    # Expected while a tenant is at its cap or its org ran out: no traceback, and
                    # no restart (and refused call) every round until then. The finished task
                    # stays in `workers`, so the lease is still renewed meanwhile.
                    log.warning(
                        "tenant out of API budget; resuming when the governor expects some",
                        extra={"tenant_id": tenant_id, "not_before": budget.not_before.isoformat()},
                    )
                    self.out_of_budget[tenant_id] = budget.not_before
                elif error is not None:
                    log.error("tenant worker failed; restarting", exc_info=error, extra={"tenant_id": tenant_id})
            resume = self.out_of_budget.get(tenant_id)
            if (task is None or task.done()) and (resume is None or self._clock() >= resume):
                self.out_of_budget.pop(tenant_id, None)
                if tenant_id in versions:
                    self.versions[tenant_id] = versions[tenant_id]
                self.workers[tenant_id] = asyncio.create_task(self._run_tenant(tenant_id), name=f"tenant-{tenant_id}")

    async def _hand_back(self, tenant_id: str, held: set[str]) -> None:
        log.info("handing tenant back", extra={"tenant_id": tenant_id})
        await self._stop(tenant_id)
        await self.store.release(tenant_id)
        held.discard(tenant_id)

    async def _stop(self, tenant_id: str) -> None:
        self.out_of_budget.pop(tenant_id, None)
        self.unconnected.pop(tenant_id, None)
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


def _only(kind: type[E], error: BaseException | None) -> list[E]:
    """The errors of ``kind`` that ended a worker, if nothing else did (a TaskGroup's are grouped)."""
    if isinstance(error, kind):
        return [error]
    if isinstance(error, BaseExceptionGroup):
        found = [_only(kind, e) for e in error.exceptions]
        if all(found):
            return [e for errors in found for e in errors]
    return []


def _out_of_budget(error: BaseException | None) -> BudgetUnavailable | None:
    """The budget refusal that ended a worker, if that alone ended it (the latest one, if several)."""
    refusals = _only(BudgetUnavailable, error)
    return max(refusals, key=lambda r: r.not_before) if refusals else None

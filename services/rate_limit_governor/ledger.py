"""The budgets in Postgres: every decision runs under the tenant row's lock."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.common.config_provider import TenantConfigs
from services.common.tenant_config import TenantNotFoundError
from services.rate_limit_governor import state
from services.rate_limit_governor.budget import Limits, TenantBudget
from services.rate_limit_governor.settings import GovernorSettings

T = TypeVar("T")


class Ledger:
    """Loads, decides and saves one tenant's budget atomically.

    ``change`` receives the budget and the connection (for sync-log rows in the same transaction)
    and returns ``(new_budget, result)``.
    """

    def __init__(self, pool: Any, settings: GovernorSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._settings = settings
        self._configs = TenantConfigs(settings.config_ttl_seconds, clock=clock)

    async def limits(self, conn: Any, tenant_id: str) -> Limits:
        stored = await self._configs.require_current(conn, tenant_id)
        s = self._settings
        return Limits(
            daily_cap=stored.config.spec.salesforce.daily_api_cap,
            org_share=s.org_share,
            burst=s.burst,
            live_reserve=s.live_reserve,
            max_long_running=s.max_long_running,
        )

    async def update(
        self, tenant_id: str, change: Callable[[TenantBudget, Any], Awaitable[tuple[TenantBudget, T]]]
    ) -> T:
        async with self._pool.acquire() as conn, conn.transaction():
            limits = await self.limits(conn, tenant_id)
            await conn.execute(
                "INSERT INTO governor_budgets (tenant_id, state) VALUES ($1, '{}'::jsonb) ON CONFLICT DO NOTHING",
                tenant_id,
            )
            stored = await conn.fetchval(
                "SELECT state FROM governor_budgets WHERE tenant_id = $1 FOR UPDATE", tenant_id
            )
            budget = state.load(limits, json.loads(stored) if isinstance(stored, str) else stored)
            budget, result = await change(budget, conn)
            await conn.execute(
                "UPDATE governor_budgets SET state = $2::jsonb, updated_at = now() WHERE tenant_id = $1",
                tenant_id,
                json.dumps(state.dump(budget)),
            )
            return result


__all__ = ["Ledger", "TenantNotFoundError"]

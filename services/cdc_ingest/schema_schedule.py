"""The tenant's schema refresh on its schedule (``spec.sync.schemaRefreshHours``, 24 by default).

The last refresh's time is in the database (the admin API's on-demand refreshes count too), so a
restart or a moved lease neither skips a refresh nor repeats one. A failed refresh is logged and
tried again after :data:`RETRY_AFTER`, whatever the error, without touching the tenant's streaming and polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from services.common.db import Pool
from services.common.metrics import Metrics
from services.common.schema_refresh import SchemaReader, read_schema, store_schema
from services.common.schema_store import last_refresh
from services.common.tenant_config import TenantConfig

log = logging.getLogger(__name__)

RETRY_AFTER = timedelta(minutes=15)


def wait_before_refresh(last: datetime | None, started: datetime, every: timedelta, now: datetime) -> timedelta:
    """How long until a refresh is due: ``every`` after the last, or after ``started`` when there was none.

    A worker's start describes every object it syncs (those are stored as versions too), so a
    refresh at once would only repeat those calls.
    """
    return max(timedelta(0), (last or started) + every - now)


class SchemaSchedule:
    def __init__(
        self,
        pool: Pool,
        config: TenantConfig,
        reader: SchemaReader,
        *,
        service: str,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._config = config
        self._reader = reader
        self._service = service
        self._metrics = metrics
        self._sleep = sleep
        self._clock = clock
        self._every = timedelta(hours=config.spec.sync.schema_refresh_hours)

    async def run_forever(self) -> None:
        tenant_id = self._config.tenant_id
        started = self._clock()
        while True:
            try:
                async with self._pool.acquire() as db:
                    wait = wait_before_refresh(await last_refresh(db, tenant_id), started, self._every, self._clock())
                if wait > timedelta(0):
                    await self._sleep(wait.total_seconds())
                    continue
                read = await read_schema(self._config, self._reader)
                async with self._pool.acquire() as db:
                    done = await store_schema(db, self._config, read, service=self._service, metrics=self._metrics)
            except Exception as exc:  # a failed refresh must never stop the tenant's syncing
                log.warning("schema refresh failed; will try again", extra={"tenant_id": tenant_id, "err": repr(exc)})
                await self._sleep(RETRY_AFTER.total_seconds())
                continue
            log.info(
                "schema refreshed",
                extra={"tenant_id": tenant_id, "changes": len(done.changes), "warnings": len(done.warnings)},
            )

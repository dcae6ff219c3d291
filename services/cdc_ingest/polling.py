"""Polled objects (CDC off for the object or the tenant, or not selected in the org).

Each is read every interval with the tuple cursor from the saved cursor less the overlap; the
cursor is saved after each page is acknowledged. After a backfill the first poll starts from the
backfill's start (less the overlap); without one, from the first run's start, saved before
anything is read.

The interval is the pair's ``schedule.pollIntervalSeconds`` (the shortest among the pairs of one
object), else the tenant's ``spec.sync.pollIntervalSeconds``. A poll asked for now (a job) waits
for a running one of the same object to end, so the two never move one cursor at the same time.

A poll refused for API budget waits until the governor expects some and then goes on from its
saved cursor: a warning when the refusals begin, no traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from services.cdc_ingest.cursor import Cursor, RecentlyEmitted
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rest import BudgetEpisode
from services.cdc_ingest.store import LeaseLostError, Store
from services.common.connections import ConnectionUnavailableError
from services.common.governor_client import BudgetUnavailable
from services.common.retry import RetryPolicy

log = logging.getLogger(__name__)


class Poller:
    def __init__(
        self,
        *,
        tenant_id: str,
        interval_seconds: float,
        overlap: timedelta,
        store: Store,
        reader: RecordReader,
        reconnect: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        intervals: Mapping[str, float] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._interval_seconds = interval_seconds
        self._intervals = intervals or {}
        self._running: dict[str, asyncio.Lock] = {}
        self._overlap = overlap
        self._store = store
        self._reader = reader
        self._reconnect = reconnect
        self._sleep = sleep

    async def poll_forever(self, entity: str) -> None:
        recent = RecentlyEmitted(self._overlap)
        budget = BudgetEpisode(self.tenant_id, f"polls of {entity} wait for budget", sleep=self._sleep)
        failures = 0
        while True:
            try:
                await self.poll_once(entity, recent)
                failures = 0
                budget.granted()
                await self._sleep(self.interval(entity))
            except BudgetUnavailable as refusal:
                await budget.wait(refusal, entity=entity)
            except (LeaseLostError, ConnectionUnavailableError, asyncio.CancelledError):
                # Both end the worker (see Stream.run).
                raise
            except Exception:
                failures += 1
                log.exception("poll failed", extra={"tenant_id": self.tenant_id, "entity": entity})
                await self._sleep(self._reconnect.delay(failures))

    def interval(self, entity: str) -> float:
        return self._intervals.get(entity, self._interval_seconds)

    async def poll_once(self, entity: str, recent: RecentlyEmitted | None = None) -> int:
        async with self._running.setdefault(entity, asyncio.Lock()):
            return await self._poll(entity, recent)

    async def _poll(self, entity: str, recent: RecentlyEmitted | None) -> int:
        saved = await self._store.poll_cursor(self.tenant_id, entity)
        if saved is None:
            backfill = await self._store.backfill(self.tenant_id, entity)
            saved = Cursor(backfill.started_at) if backfill else Cursor(datetime.now(UTC))
            # Saved before the first read: a run that publishes nothing saves no page cursor,
            # and the next run would start from its own now(), skipping what changed in between.
            await self._store.save_poll_cursor(self.tenant_id, entity, saved)
        if recent is not None:
            recent.forget_before(saved)

        async def save(cursor: Cursor, _published: int) -> None:
            await self._store.save_poll_cursor(self.tenant_id, entity, cursor)

        return await self._reader.read_window(entity, saved.minus(self._overlap), "poll", save=save, recent=recent)

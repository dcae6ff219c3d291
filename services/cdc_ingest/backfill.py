"""Backfills: a snapshot of every record of an object, by REST (paged, tuple cursor) or by a Bulk 2.0
query job above ``bulk_threshold`` records, resumable after a stop from its saved progress.

They run on the first connection (before the stream starts) and whenever one is asked for while
the tenant is served, as jobs (services.cdc_ingest.jobs; one backfill job per object, which the
pairs of the object share). A lock per object keeps two runs of one object from overlapping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from datetime import datetime

from services.cdc_ingest.cursor import Cursor
from services.cdc_ingest.handover import Snapshots
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rest import BulkJobGoneError, SalesforceRest
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import Backfill, Store

log = logging.getLogger(__name__)


def _begun(state: Backfill) -> bool:
    """Whether a backfill has read anything (a job created, a page published)."""
    return state.job_id is not None or state.cursor is not None or state.emitted > 0


class Backfiller:
    def __init__(
        self,
        *,
        tenant_id: str,
        settings: CdcIngestSettings,
        rest: SalesforceRest,
        store: Store,
        reader: RecordReader,
        publisher: Publisher,
        objects: Objects,
        snapshots: Snapshots,
        filters: Mapping[str, str] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        # What the stream may leave out once it takes over (services.cdc_ingest.handover).
        self._snapshots = snapshots
        # Each object's pair-filter clause to push into its reads (services.cdc_ingest.filters.pushdown).
        self._filters = filters or {}
        self._settings = settings
        self._rest = rest
        self._store = store
        self._reader = reader
        self._publisher = publisher
        self._objects = objects
        self._running: dict[str, asyncio.Lock] = {}

    async def backfill(self, entity: str) -> datetime:
        """Snapshot every record of ``entity`` (resuming an interrupted run); its start time."""
        async with self._running.setdefault(entity, asyncio.Lock()):
            state = await self._store.backfill(self.tenant_id, entity)
            if state is None or (state.status == "running" and not _begun(state)):
                # A backfill asked for (a job) arrives without a count, and
                # the count may have crossed the threshold since the last one: choose here, while
                # nothing has been read and switching method costs nothing.
                counted = await self._rest.count(entity, self._filters.get(entity))
                self._snapshots.reading(entity, counted.server_time)
                count = counted.records
                method = "bulk" if count > self._settings.bulk_threshold else "rest"
                if state is None:
                    await self._store.start_backfill(self.tenant_id, entity, method, count)
                else:
                    await self._store.count_backfill(self.tenant_id, entity, method, count)
                await self._store.log_event(
                    self.tenant_id,
                    "cdc.backfill.started",
                    message=f"backfill of {entity} ({count} records) by {method}",
                    detail={"entity": entity, "records": count, "method": method},
                )
                state = await self._store.backfill(self.tenant_id, entity)
            assert state is not None
            if state.status == "done":
                return state.started_at
            if state.method == "bulk":
                emitted = await self._bulk(entity, state.job_id, state.locator, state.emitted)
            else:
                emitted = await self._rest_pages(entity, state.cursor, state.emitted)
            await self._store.finish_backfill(self.tenant_id, entity)
            await self._store.log_event(
                self.tenant_id,
                "cdc.backfill.completed",
                message=f"backfill of {entity} done: {emitted} snapshot(s) published",
                detail={"entity": entity, "published": emitted, "method": state.method},
            )
            return state.started_at

    async def _rest_pages(self, entity: str, cursor: Cursor | None, emitted: int) -> int:
        async def save(at: Cursor, published: int) -> None:
            await self._store.backfill_progress(
                self.tenant_id, entity, job_id=None, locator=None, cursor=at, emitted=emitted + published
            )

        published = await self._reader.read_window(
            entity, cursor, "backfill", save=save, all_rows=False, backfill=True, where=self._filters.get(entity)
        )
        return emitted + published

    async def _bulk(self, entity: str, job_id: str | None, locator: str | None, emitted: int) -> int:
        """Read ``entity`` with a Bulk 2.0 query job, resuming at the job's locator.

        The query has no ORDER BY: Bulk API 2.0 does not support it, and using it turns off the
        automatic PK chunking, so a large object's query runs long and may time out (Salesforce's
        Bulk API 2.0 "SOQL considerations" and "Troubleshooting query timeouts"). Without an
        order there is no "after the last record emitted", so a resume goes by the job's own
        locator; a job that is gone (deleted 7 days after it completed) is replaced by a new
        one over the whole object, re-publishing snapshots whose event ids stay the same for an
        unchanged record.
        """
        fields = await self._reader.select(entity)
        types = await self._rest.fields(entity)
        while True:
            if job_id is None:
                where = self._filters.get(entity)
                soql = f"SELECT {', '.join(fields)} FROM {entity}" + (f" WHERE {where}" if where else "")
                job_id, locator = await self._rest.create_query_job(soql), None
                await self._store.backfill_progress(
                    self.tenant_id, entity, job_id=job_id, locator=None, cursor=None, emitted=emitted
                )
            try:
                await self._rest.wait_for_job(job_id, self._settings.bulk_poll_seconds)
                while True:
                    page = await self._rest.job_page(job_id, locator, self._settings.bulk_page_size)
                    changes = []
                    for row in page.rows:
                        convert = functools.partial(self._reader.csv_change, entity, row, types)
                        change = await self._reader.carried(entity, row, "backfill", convert)
                        if change is not None:
                            changes.append(change)
                    await self._publisher.publish(changes, "backfill")
                    emitted += len(changes)
                    locator = page.next_locator
                    await self._store.backfill_progress(
                        self.tenant_id, entity, job_id=job_id, locator=locator, cursor=None, emitted=emitted
                    )
                    if locator is None:
                        return emitted
            except BulkJobGoneError:
                log.warning(
                    "bulk job gone, reading the object again with a new one",
                    extra={"tenant_id": self.tenant_id, "job": job_id},
                )
                job_id = None

"""The tenant's jobs (:mod:`services.common.jobs`): polls, backfills and reconciles asked for by an
operator or due by a pair's schedule, run by the worker holding the tenant's lease.

- *Claiming*: every ``lease_renew_seconds`` the requested jobs are claimed (fenced by the lease)
  and each runs in its own task, so a long reconcile never delays a poll asked for meanwhile.
  Jobs left running by the tenant's previous owner are requeued when the worker starts.
- *Schedules*: a pair's ``schedule.reconcile`` files a reconcile when the interval has passed
  since the newest one was asked for (or since the worker started, for a pair never reconciled),
  so restarts and moved leases neither skip nor repeat one.
- *First backfills*: a tenant's first connection backfills every object through a job too
  (trigger ``start``), so an operator sees it like any other.
- *Failures*: a job that fails is marked failed with the error, in the sync log too; it does not
  stop the tenant. A lost lease or connection ends the worker as everywhere else, and the job is
  taken up again by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from services.cdc_ingest.backfill import Backfiller
from services.cdc_ingest.polling import Poller
from services.cdc_ingest.reconcile import Reconciler
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.store import LeaseLostError, Store
from services.common import jobs
from services.common.connections import ConnectionUnavailableError
from services.common.jobs import Job
from services.common.tenant_config import ObjectPair, TenantConfig

log = logging.getLogger(__name__)

WORKER = "cdc-ingest"


def reconcile_due(last: datetime | None, started: datetime, every: timedelta, now: datetime) -> bool:
    """Whether a scheduled reconcile is due: ``every`` after the newest asked for, or after the
    worker's start for a pair never reconciled (its first backfill has just compared everything)."""
    return now >= (last or started) + every


class JobRunner:
    def __init__(
        self,
        *,
        tenant_id: str,
        config: TenantConfig,
        store: Store,
        objects: Objects,
        poller: Poller,
        backfiller: Backfiller,
        reconciler: Reconciler,
        every_seconds: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tenant_id = tenant_id
        self._pairs = {pair.name: pair for pair in config.spec.objects}
        self._store = store
        self._objects = objects
        self._poller = poller
        self._backfiller = backfiller
        self._reconciler = reconciler
        self._every = every_seconds
        self._sleep = sleep
        self._clock = clock
        self._started = clock()

    async def requeue_interrupted(self) -> None:
        count = await jobs.requeue_interrupted(self._store.pool, self.tenant_id)
        if count:
            log.info("interrupted jobs requeued", extra={"tenant_id": self.tenant_id, "jobs": count})

    async def first_backfills(self) -> datetime:
        """Backfill every object not yet backfilled, each as a job; the earliest start among them."""
        starts: list[datetime] = []
        for entity in self._objects.every:
            state = await self._store.backfill(self.tenant_id, entity)
            if state is not None and state.status == "done":
                starts.append(state.started_at)
                continue
            pair = next(p for p in self._pairs.values() if p.salesforce.object == entity)
            job = await jobs.open_job(self._store.pool, self.tenant_id, "backfill", pair.name, entity, "start", WORKER)
            await self._run(job)
            state = await self._store.backfill(self.tenant_id, entity)
            if state is None or state.status != "done":
                raise RuntimeError(f"first backfill of {entity} did not complete")
            starts.append(state.started_at)
        return min(starts, default=self._clock())

    async def run_forever(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                await self._file_scheduled()
                for job in await self._store.claim_jobs(self.tenant_id):
                    group.create_task(self._run(job), name=f"job-{self.tenant_id}-{job.id}")
                await self._sleep(self._every)

    async def _file_scheduled(self) -> None:
        now = self._clock()
        pool = self._store.pool
        for pair in self._pairs.values():
            every = pair.reconcile_every_seconds
            if every is None:
                continue
            last = await jobs.last_requested(pool, self.tenant_id, "reconcile", pair.name)
            if not reconcile_due(last, self._started, timedelta(seconds=every), now):
                continue
            try:
                job = await jobs.request_job(
                    pool, self.tenant_id, "reconcile", pair.name, pair.salesforce.object, "schedule", WORKER
                )
            except jobs.ActiveJobError:
                continue
            log.info("scheduled reconcile filed", extra={"tenant_id": self.tenant_id, "job": job.id})
        await jobs.prune(pool, self.tenant_id, now)

    async def _run(self, job: Job) -> None:
        pair = self._pairs.get(job.object_pair)
        try:
            if pair is None:
                raise _RefusedError(f"object pair {job.object_pair} is no longer in the tenant's configuration")
            done, estimated, result = await self._work(job, pair)
        except (LeaseLostError, ConnectionUnavailableError, asyncio.CancelledError):
            raise  # the job stays running; the tenant's next owner takes it up again
        except Exception as exc:
            error = str(exc) if isinstance(exc, _RefusedError) else f"{type(exc).__name__}: {exc}"
            log.warning("job failed", extra={"tenant_id": self.tenant_id, "job": job.id, "err": error})
            await jobs.finish(self._store.pool, job.id, "failed", done=0, error=error)
            await self._store.log_event(
                self.tenant_id,
                "job.failed",
                message=f"{job.kind} job {job.id} of {job.object_pair} failed: {error}",
                code="JOB_FAILED",
                detail={"job": job.id, "kind": job.kind, "object_pair": job.object_pair, "error": error},
            )
            return
        await jobs.finish(self._store.pool, job.id, "succeeded", done=done, estimated=estimated, result=result)

    async def _work(self, job: Job, pair: ObjectPair) -> tuple[int, int | None, dict[str, Any]]:
        entity = pair.salesforce.object
        if job.kind == "poll":
            if entity not in self._objects.polled:
                raise _RefusedError(
                    f"{entity} is streamed by Change Data Capture: its changes arrive as events, and there is"
                    " nothing to poll; run a reconcile to compare it with Salesforce"
                )
            published = await self._poller.poll_once(entity)
            return published, None, {"published": published}
        if job.kind == "backfill":
            await self._backfiller.backfill(entity)
            state = await self._store.backfill(self.tenant_id, entity)
            emitted = state.emitted if state is not None else 0
            return emitted, state.estimated if state is not None else None, {"published": emitted}

        async def progress(done: int, estimated: int | None, result: dict[str, Any]) -> None:
            await jobs.save_progress(self._store.pool, job.id, done, estimated, result)

        found = await self._reconciler.reconcile(pair, job.id, progress)
        return found.salesforce_records, None, found.as_result()


class _RefusedError(Exception):
    """A job that cannot be done as asked (its message is for the operator as it is)."""

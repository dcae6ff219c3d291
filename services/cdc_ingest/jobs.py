"""The tenant's jobs (:mod:`services.common.jobs`): polls, backfills and reconciles asked for by an
operator or due by a pair's schedule, run by the worker holding the tenant's lease.

- *Claiming*: every ``lease_renew_seconds`` the requested jobs are claimed (fenced by the lease)
  and each runs in its own task, so a long reconcile never delays a poll asked for meanwhile.
  Jobs left running by the tenant's previous owner are requeued when the worker starts; so is a
  backfill left running without a job (one asked for before jobs existed, or one whose job failed).
- *Backfills*: pairs of one object share its backfill. A backfill job re-reads from the start
  unless the object's backfill began after the job was asked for (then it resumes that one:
  the job was interrupted, not asked for again).
- *First backfills*: a tenant's first connection backfills every object through a job too
  (trigger ``start``). The stream waits for them, so one that fails is retried in the same job,
  with backoff, its error shown on the job, rather than ending the worker.
- *Schedules*: a pair's ``schedule.reconcile`` files a reconcile once the interval has passed since
  the newest one ended (or was asked for, while it runs). A pair never reconciled counts from its
  object's last backfill, so restarts and moved leases neither skip nor repeat one.
- *Budget*: a job refused for API budget waits until the governor expects some and goes on
  (a backfill from where it stopped, a reconcile from the start), a warning when the refusals
  begin and no traceback; it stays running meanwhile.
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
from services.cdc_ingest.rest import BudgetEpisode
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.store import LeaseLostError, Store
from services.common import jobs
from services.common.connections import ConnectionUnavailableError
from services.common.jobs import Job
from services.common.retry import RetryPolicy
from services.common.tenant_config import ObjectPair, TenantConfig

log = logging.getLogger(__name__)

WORKER = "cdc-ingest"
PRUNE_EVERY = timedelta(hours=1)
# Between attempts at a first backfill that failed (the stream waits for it).
FIRST_BACKFILL_RETRY = RetryPolicy(base_delay=5.0, max_delay=300.0, max_attempts=None)


def next_reconcile(last: datetime | None, reference: datetime, every: timedelta) -> datetime:
    """When a pair's next scheduled reconcile is due: ``every`` after the last one ended (or was
    asked for), or after ``reference`` (its object's last backfill) for a pair never reconciled."""
    return (last or reference) + every


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
        self._due: dict[str, datetime] = {}
        self._pruned: datetime | None = None

    async def requeue_interrupted(self) -> None:
        """Take up what the tenant's previous owner left: its running jobs, and backfills left
        running without a job."""
        pool = self._store.pool
        count = await jobs.requeue_interrupted(pool, self.tenant_id)
        for entity in self._objects.every:
            state = await self._store.backfill(self.tenant_id, entity)
            if state is None or state.status != "running":
                continue
            try:
                await jobs.request_job(
                    pool, self.tenant_id, "backfill", self._pair_of(entity).name, entity, "start", WORKER
                )
                count += 1
            except jobs.ActiveJobError:
                pass
        if count:
            log.info("interrupted work taken up", extra={"tenant_id": self.tenant_id, "jobs": count})

    def _pair_of(self, entity: str) -> ObjectPair:
        return next(p for p in self._pairs.values() if p.salesforce.object == entity)

    async def first_backfills(self) -> datetime:
        """Backfill every object not yet backfilled, each as a job; the earliest start among them."""
        starts: list[datetime] = []
        for entity in self._objects.every:
            state = await self._store.backfill(self.tenant_id, entity)
            if state is None or state.status != "done":
                pair = self._pair_of(entity)
                job = await jobs.open_job(
                    self._store.pool, self.tenant_id, "backfill", pair.name, entity, "start", WORKER
                )
                await self._until_done(job, pair)
                state = await self._store.backfill(self.tenant_id, entity)
            assert state is not None
            starts.append(state.started_at)
        return min(starts, default=self._clock())

    async def _until_done(self, job: Job, pair: ObjectPair) -> None:
        failures = 0
        while True:
            try:
                done, estimated, result = await self._budgeted(job, pair)
            except (LeaseLostError, ConnectionUnavailableError, asyncio.CancelledError):
                raise
            except Exception as exc:
                failures += 1
                error = _error(exc)
                log.warning("first backfill failed; trying again", extra={"tenant_id": self.tenant_id, "err": error})
                await jobs.note_error(self._store.pool, job.id, f"attempt {failures} failed: {error}")
                await self._sleep(FIRST_BACKFILL_RETRY.delay(failures))
                continue
            await jobs.finish(self._store.pool, job.id, "succeeded", done=done, estimated=estimated, result=result)
            return

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
            if every is None or now < self._due.get(pair.name, now):
                continue
            last = await jobs.last_reconciled(pool, self.tenant_id, pair.name)
            backfill = await self._store.backfill(self.tenant_id, pair.salesforce.object)
            due = next_reconcile(last, backfill.started_at if backfill else now, timedelta(seconds=every))
            if now >= due:
                try:
                    job = await jobs.request_job(
                        pool, self.tenant_id, "reconcile", pair.name, pair.salesforce.object, "schedule", WORKER
                    )
                    log.info("scheduled reconcile filed", extra={"tenant_id": self.tenant_id, "job": job.id})
                except jobs.ActiveJobError:
                    pass
                # Looked at again once this one has run (a minute is the least a reconcile takes to matter).
                due = now + min(timedelta(seconds=every), timedelta(minutes=1))
            self._due[pair.name] = due
        if self._pruned is None or now - self._pruned >= PRUNE_EVERY:
            await jobs.prune(pool, self.tenant_id, now)
            self._pruned = now

    async def _run(self, job: Job) -> None:
        pair = self._pairs.get(job.object_pair)
        try:
            if pair is None:
                raise _RefusedError(
                    f"object pair {job.object_pair} is not in the configuration this worker serves; a pair just"
                    " added is served once cdc-ingest has taken up the new version (within seconds): ask again"
                )
            done, estimated, result = await self._budgeted(job, pair)
        except (LeaseLostError, ConnectionUnavailableError, asyncio.CancelledError):
            raise  # the job stays running; the tenant's next owner takes it up again
        except Exception as exc:
            error = _error(exc)
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

    async def _budgeted(self, job: Job, pair: ObjectPair) -> tuple[int, int | None, dict[str, Any]]:
        """The job's work, waiting for budget (as long as the governor says) whenever it is refused."""
        budget = BudgetEpisode(self.tenant_id, f"{job.kind} job {job.id} waits for budget", sleep=self._sleep)
        return await budget.until_granted(lambda: self._work(job, pair), job=job.id)

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
            state = await self._store.backfill(self.tenant_id, entity)
            # A run that began after the job was asked for is this job's, interrupted: resume it.
            if job.trigger != "start" and (state is None or state.started_at < job.created_at):
                await self._store.want_backfill(self.tenant_id, entity)
            await self._backfiller.backfill(entity)
            state = await self._store.backfill(self.tenant_id, entity)
            emitted = state.emitted if state is not None else 0
            return emitted, state.estimated if state is not None else None, {"published": emitted}

        async def progress(done: int, estimated: int | None, result: dict[str, Any]) -> None:
            await jobs.save_progress(self._store.pool, job.id, done, estimated, result)

        found = await self._reconciler.reconcile(pair, job.id, progress)
        return found.read, None, found.as_result()


def _error(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _RefusedError) else f"{type(exc).__name__}: {exc}"


class _RefusedError(Exception):
    """A job that cannot be done as asked (its message is for the operator as it is)."""

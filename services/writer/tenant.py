"""One tenant's writing loop: batching window, in-flight records, retries, backoff.

Every tenant has its own :class:`TenantWriter` and its own task, so a tenant that is throttled,
locked or down only ever waits for itself. Per record the writer keeps Salesforce order: while a
write to a record is in flight (or waiting to be retried), later writes to that record wait
behind it, and join the retry (coalesced after it) or go to the batcher once it settles. So two
writes to one record are never in flight at once, and a retry never overtakes a newer value.
Just before a call, writes at or below the version already applied to their link (a replay) are
settled as superseded instead of sent, and the fields a replayed older write folded into a newer
one are left out of it (:mod:`services.writer.versions`).

When a rebalance takes partitions away, their writes not sent yet are dropped, and the rebalance
waits for the calls still sending some (:meth:`TenantWriters.revoke`): otherwise this replica
would keep writing them while the partitions' new owner writes the same records from its replay,
and an older value sent here could land after a newer one sent there.

Failures:
* record-level retryable errors (UNABLE_TO_LOCK_ROW, rollback placeholders, Bulk leftovers) are
  retried with capped, jittered backoff, up to ``max_record_attempts``; after that the record is
  rejected with its last code (DLQ, replayable), so one cursed record cannot hold the tenant's
  offsets forever;
* whole-call failures (503, timeouts, quota, no budget) pause the whole tenant, until the
  governor's not-before time or a growing backoff, and never count against the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from opentelemetry import trace

from services.common.retry import RetryPolicy
from services.common.telemetry import batch_span, tracing_enabled
from services.common.tenant_config import TenantNotFoundError
from services.writer.batching import Batch, Batcher, Ingestion, RecordWrite
from services.writer.commands import Delivery
from services.writer.executor import CallFailure, retry_all
from services.writer.payload import ItemError, Outcome, WriteResult
from services.writer.versions import AppliedVersions, unapplied

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

RecordKey = tuple[str, str, str]
Clock = Callable[[], datetime]


class Executor(Protocol):
    async def execute(self, batch: Batch, *, backfill: bool = False) -> list[WriteResult]: ...


@dataclass(frozen=True)
class TenantResources:
    executor: Executor
    ingestion: Ingestion


class Deliveries(Protocol):
    """What the writer knows of the commands behind a write (:class:`~services.writer.inflight.InFlight`)."""

    def is_backfill(self, write: RecordWrite) -> bool: ...
    def revoked(self, write: RecordWrite) -> bool: ...
    def drop(self, write: RecordWrite) -> None: ...
    def deliveries_of(self, write: RecordWrite) -> list[Delivery]: ...


class Settler(Protocol):
    """Makes outcomes durable (write-outcomes, DLQ, sync log) and releases their offsets."""

    async def settle(self, tenant_id: str, settled: list[tuple[WriteResult, int]]) -> None: ...


RECORD_RETRY = RetryPolicy(base_delay=0.2, max_delay=30.0, max_attempts=None)
TENANT_RETRY = RetryPolicy(base_delay=0.5, max_delay=60.0, max_attempts=None)
SETTLE_RETRY = RetryPolicy(base_delay=0.2, max_delay=10.0, max_attempts=None)


@dataclass(frozen=True)
class TenantOptions:
    window: timedelta = timedelta(milliseconds=200)
    max_wait: timedelta = timedelta(seconds=2)
    bulk_threshold: int = 2000
    bulk_max_records: int = 10_000
    # Batches in flight at once for one tenant (1 = serial).
    concurrency: int = 2
    max_record_attempts: int = 10
    record_retry: RetryPolicy = RECORD_RETRY
    tenant_retry: RetryPolicy = TENANT_RETRY
    settle_retry: RetryPolicy = SETTLE_RETRY


class TenantWriter:
    def __init__(
        self,
        tenant_id: str,
        *,
        resources: Callable[[], Awaitable[TenantResources]],
        settler: Settler,
        versions: AppliedVersions,
        deliveries: Deliveries,
        options: TenantOptions,
        clock: Clock = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tenant_id = tenant_id
        self._resources = resources
        self._settler = settler
        self._versions = versions
        self._deliveries = deliveries
        self._options = options
        self._clock = clock
        self._sleep = sleep
        self._batcher = Batcher(
            window=options.window,
            max_wait=options.max_wait,
            bulk_threshold=options.bulk_threshold,
            bulk_max_records=options.bulk_max_records,
        )
        self._ready: list[Batch] = []
        self._in_flight: set[RecordKey] = set()
        self._behind: dict[RecordKey, list[RecordWrite]] = {}
        self._retries: dict[RecordKey, tuple[datetime, RecordWrite]] = {}
        self._attempts: dict[RecordKey, int] = {}
        self._record_failures: dict[RecordKey, int] = {}
        self._tenant_failures = 0
        self._paused_until: datetime | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._sending: dict[asyncio.Task[None], Batch] = {}
        self._refused: list[WriteResult] = []
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ intake (consumer side)

    def submit(self, writes: list[RecordWrite], refused: list[WriteResult]) -> None:
        now = self._clock()
        for write in writes:
            key = write.record_key
            if key in self._in_flight:
                self._behind.setdefault(key, []).append(write)
            else:
                self._queue(write, now)
        self._refused.extend(refused)
        self._wake.set()

    def _queue(self, write: RecordWrite, now: datetime) -> None:
        dropped = self._batcher.add(write, now)
        if dropped:
            log.warning(
                "older write folded into a newer one without some of its fields",
                extra={
                    "tenant_id": self.tenant_id,
                    "link_id": write.link_id,
                    "version": write.version,
                    "fields": sorted(dropped),
                },
            )

    def pending(self) -> int:
        """Writes held (batched, in flight, waiting behind one to their record, refused): the
        consumer parks this tenant's later commands while it holds too many (:mod:`services.writer.parking`)."""
        return (
            len(self._batcher) + len(self._in_flight) + sum(len(p) for p in self._behind.values()) + len(self._refused)
        )

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        # Learn the tenant's ingestion mode before the first batch is cut (a failure here is
        # retried with the first batch, which needs the same resources).
        with contextlib.suppress(Exception):
            self._batcher.ingestion = (await self._resources()).ingestion
        try:
            while True:
                self._step(self._clock())
                await self._wait()
        finally:
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    def _step(self, now: datetime) -> None:
        if self._refused:
            refused, self._refused = self._refused, []
            # Refused before any call: they never were in flight, so they touch no record state.
            self._spawn(self._settle([(r, 0) for r in refused]))
        for key, (due, write) in list(self._retries.items()):
            if due <= now:
                del self._retries[key]
                self._queue(write, now)
                for later in self._behind.pop(key, []):
                    self._queue(later, now)
                self._in_flight.discard(key)
        if self._paused_until is not None and now < self._paused_until:
            return
        self._paused_until = None
        while len(self._running) < self._options.concurrency:
            if not self._ready:
                # Taken only when a slot is free: meanwhile the batcher keeps coalescing, and a
                # backlog that outgrows the Bulk threshold becomes one Bulk job.
                self._ready = self._batcher.due(now)
                for batch in self._ready:
                    self._in_flight.update(w.record_key for w in batch.writes)
            if not self._ready:
                break
            batch = self._ready.pop(0)
            self._sending[self._spawn(self._run_batch(batch))] = batch

    async def _wait(self) -> None:
        now = self._clock()
        moments = [due for due, _ in self._retries.values()]
        if self._paused_until is not None:
            moments.append(self._paused_until)
        elif len(self._running) < self._options.concurrency:
            deadline = self._batcher.next_deadline()
            if deadline is not None:
                moments.append(deadline)
            if self._ready:
                moments.append(now)
        timeout = max(0.0, (min(moments) - now).total_seconds()) if moments else None
        self._wake.clear()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (gh-86296).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            finally:
                self._running.discard(task)
                self._sending.pop(task, None)
                self._wake.set()

        task = asyncio.get_running_loop().create_task(run())
        self._running.add(task)
        return task

    # ------------------------------------------------------------------ rebalance

    def revoke(self) -> list[asyncio.Task[None]]:
        """Drop every write of a revoked partition not sent yet; the calls still sending some."""
        revoked = self._deliveries.revoked
        for write in self._batcher.discard(revoked):
            self._deliveries.drop(write)
        for key, later in list(self._behind.items()):
            self._behind[key] = [w for w in later if not self._dropped(w)]
        for key, (_, write) in list(self._retries.items()):
            if revoked(write):
                del self._retries[key]
                self._release(key, write)
        kept = []
        for batch in self._ready:
            for write in batch.writes:
                if revoked(write):
                    self._release(write.record_key, write)
            writes = tuple(w for w in batch.writes if not revoked(w))
            if writes:
                kept.append(replace(batch, writes=writes))
        self._ready = kept
        self._wake.set()
        return [task for task, batch in self._sending.items() if any(revoked(w) for w in batch.writes)]

    def _dropped(self, write: RecordWrite) -> bool:
        if not self._deliveries.revoked(write):
            return False
        self._deliveries.drop(write)
        return True

    def _release(self, key: RecordKey, write: RecordWrite) -> None:
        """``write`` (of a revoked partition) is not sent here: the record is free for what waits behind it."""
        self._deliveries.drop(write)
        self._in_flight.discard(key)
        self._attempts.pop(key, None)
        self._record_failures.pop(key, None)
        now = self._clock()
        for later in self._behind.pop(key, []):
            self._queue(later, now)

    async def _run_batch(self, batch: Batch) -> None:
        if not tracing_enabled():
            await self._send_batch(batch)
            return
        # The call continues the trace of the (first) command it writes, and links the others'.
        headers = [d.headers for w in batch.writes for d in self._deliveries.deliveries_of(w)]
        with batch_span(_tracer, "writer send", headers, kind=trace.SpanKind.INTERNAL):
            await self._send_batch(batch)

    async def _send_batch(self, batch: Batch) -> None:
        backfill = all(self._deliveries.is_backfill(w) for w in batch.writes)
        try:
            resources = await self._resources()
            # Read when the call is about to be made: a newer write settled meanwhile counts.
            applied = await self._versions.applied(self.tenant_id, {w.link_id for w in batch.writes})
        except TenantNotFoundError as exc:
            # No configuration, no org to write to: refuse, replayable from the DLQ once configured.
            error = ItemError("TENANT_NOT_CONFIGURED", str(exc))
            results = [WriteResult(w, Outcome.REJECTED, errors=(error,)) for w in batch.writes]
        except Exception as exc:  # configuration or database unreadable now: retry the tenant later
            log.warning("tenant resources unavailable", extra={"tenant_id": self.tenant_id, "reason": str(exc)})
            results = retry_all(batch.writes, CallFailure(ItemError("CONFIGURATION_ERROR", str(exc)), False))
        else:
            self._batcher.ingestion = resources.ingestion
            sendable = [(w, unapplied(w, applied)) for w in batch.writes]
            results = [
                WriteResult(w, Outcome.SUPERSEDED, record_id=w.record_id) for w, left in sendable if left is None
            ]
            fresh = tuple(left for _, left in sendable if left is not None)
            if fresh:
                results += await resources.executor.execute(replace(batch, writes=fresh), backfill=backfill)
        await self._finish(results)

    async def _finish(self, results: list[WriteResult]) -> None:
        now = self._clock()
        settled: list[tuple[WriteResult, int]] = []
        retries: list[WriteResult] = []
        for result in results:
            key = result.write.record_key
            attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
            if result.outcome is not Outcome.RETRY:
                settled.append((result, attempts))
            elif self._deliveries.revoked(result.write):
                self._release(key, result.write)  # the partition's new owner retries it
            elif result.whole_call:
                retries.append(result)
            else:
                failures = self._record_failures[key] = self._record_failures.get(key, 0) + 1
                if failures >= self._options.max_record_attempts:
                    settled.append((replace(result, outcome=Outcome.REJECTED), attempts))
                else:
                    retries.append(result)
        if settled:
            await self._settle(settled)
        whole_call = [r for r in retries if r.whole_call]
        if whole_call:
            self._tenant_failures += 1
            first = whole_call[0]
            pause = first.retry_at or now + timedelta(seconds=self._options.tenant_retry.delay(self._tenant_failures))
            self._paused_until = max(pause, self._paused_until or pause)
            log.warning(
                "tenant paused",
                extra={
                    "tenant_id": self.tenant_id,
                    "code": first.code,
                    "until": pause.isoformat(),
                    "records": len(whole_call),
                },
            )
        elif settled:
            self._tenant_failures = 0
        for result in retries:
            key = result.write.record_key
            if result.whole_call:
                due = self._paused_until or now
            else:
                due = now + timedelta(seconds=self._options.record_retry.delay(self._record_failures[key]))
            self._retries[key] = (due, result.write)
        now = self._clock()
        for result, _ in settled:
            key = result.write.record_key
            self._in_flight.discard(key)
            self._attempts.pop(key, None)
            self._record_failures.pop(key, None)
            for later in self._behind.pop(key, []):
                self._queue(later, now)

    async def _settle(self, settled: list[tuple[WriteResult, int]]) -> None:
        attempt = 0
        while True:
            try:
                await self._settler.settle(self.tenant_id, settled)
                return
            except Exception as exc:  # Kafka or Postgres briefly away: the outcomes are known, retry
                attempt += 1
                delay = self._options.settle_retry.delay(attempt)
                log.warning(
                    "settling outcomes failed, retrying",
                    extra={"tenant_id": self.tenant_id, "retry_in_s": round(delay, 3)},
                    exc_info=exc,
                )
                await self._sleep(delay)


class TenantWriters:
    """Every tenant's :class:`TenantWriter`, each on its own task from the tenant's first write."""

    def __init__(
        self,
        *,
        resources: Callable[[str], Awaitable[TenantResources]],
        settler: Settler,
        versions: AppliedVersions,
        deliveries: Deliveries,
        options: TenantOptions,
    ) -> None:
        self._resources = resources
        self._settler = settler
        self._versions = versions
        self._deliveries = deliveries
        self._options = options
        self._writers: dict[str, TenantWriter] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def of(self, tenant_id: str) -> TenantWriter:
        """The tenant's writer, started now if this is its first write."""
        writer = self._writers.get(tenant_id)
        if writer is None:
            writer = TenantWriter(
                tenant_id,
                resources=functools.partial(self._resources, tenant_id),
                settler=self._settler,
                versions=self._versions,
                deliveries=self._deliveries,
                options=self._options,
            )
            self._writers[tenant_id] = writer
            # A context of its own: the loop outlives the command that started it, whose span it
            # would otherwise carry into every later call.
            self._tasks[tenant_id] = asyncio.get_running_loop().create_task(
                writer.run(), name=f"writer-{tenant_id}", context=contextvars.Context()
            )
        return writer

    async def revoke(self, *, within: float) -> None:
        """Partitions were revoked: drop their writes not sent yet, and wait up to ``within`` seconds
        for the calls still sending some (module doc)."""
        sending = [task for writer in self._writers.values() for task in writer.revoke()]
        if sending:
            _, still = await asyncio.wait(sending, timeout=within)
            if still:
                # Their writes settle later, here, without touching the new owner's offsets.
                log.warning("calls of revoked partitions still running", extra={"calls": len(still)})

    async def stop(self, *, within: float) -> None:
        """Cancel every tenant's loop and wait up to ``within`` seconds (writes still held are left to the replay)."""
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            # Bounded: a task that does not finish after cancellation must not hold the process.
            _, stuck = await asyncio.wait(self._tasks.values(), timeout=within)
            if stuck:
                log.error("writer tasks did not stop", extra={"tasks": sorted(t.get_name() for t in stuck)})

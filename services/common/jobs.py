"""Jobs as the control plane and cdc-ingest see them (``deploy/sql/0021_jobs.sql``): a poll, backfill
or reconcile of one object pair, asked for by an operator or a schedule, run by the cdc-ingest
replica serving the tenant (:mod:`services.cdc_ingest.jobs`), with its state and progress.

At most one job of a kind per pair waits or runs; asking again meets :class:`ActiveJobError`,
which names the job there is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, get_args

Kind = Literal["poll", "backfill", "reconcile"]
JobStatus = Literal["requested", "running", "succeeded", "failed"]
Trigger = Literal["operator", "schedule", "start"]

KINDS: tuple[Kind, ...] = get_args(Kind)
# Finished jobs are kept this long (the newest of each kind and pair always, for schedules).
KEPT_FOR = timedelta(days=90)


class Db(Protocol):
    async def execute(self, query: str, *args: Any) -> Any: ...
    async def fetch(self, query: str, *args: Any) -> Any: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Job:
    id: int
    tenant_id: str
    kind: Kind
    object_pair: str
    object: str
    status: JobStatus
    trigger: Trigger
    requested_by: str
    done: int
    estimated: int | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """Done of estimated (1 once succeeded; records created meanwhile can take it past 1)."""
        if self.status == "succeeded":
            return 1.0
        return self.done / self.estimated if self.estimated else None

    @property
    def per_second(self) -> float | None:
        """Records done per second, from the start to the last progress saved (or the end)."""
        if self.started_at is None or not self.done:
            return None
        elapsed = ((self.finished_at or self.updated_at) - self.started_at).total_seconds()
        return self.done / elapsed if elapsed > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far, the time to do the rest of the estimate; None when unknown."""
        rate = self.per_second
        if self.status != "running" or self.estimated is None or rate is None:
            return None
        return max(0, self.estimated - self.done) / rate


class ActiveJobError(Exception):
    """A job of that kind already waits or runs for the pair."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"{job.kind} job {job.id} of {job.object_pair} is {job.status}")
        self.job = job


# A running backfill saves its progress in `backfills` (page by page, fenced by the lease); the
# job shows it from there rather than writing every page twice.
_SELECT = """
SELECT j.id, j.tenant_id, j.kind, j.object_pair, j.object, j.status, j.trigger, j.requested_by,
       CASE WHEN b.object IS NULL THEN j.done ELSE b.emitted END AS done,
       CASE WHEN b.object IS NULL THEN j.estimated ELSE b.estimated END AS estimated,
       j.created_at, GREATEST(j.updated_at, b.updated_at) AS updated_at, j.started_at, j.finished_at,
       j.error, j.result
FROM jobs j
LEFT JOIN backfills b
  ON j.kind = 'backfill' AND j.status = 'running' AND b.status = 'running'
 AND b.tenant_id = j.tenant_id AND b.object = j.object
"""


def _job(row: Any) -> Job:
    result = row["result"]
    return Job(
        id=row["id"],
        tenant_id=row["tenant_id"],
        kind=row["kind"],
        object_pair=row["object_pair"],
        object=row["object"],
        status=row["status"],
        trigger=row["trigger"],
        requested_by=row["requested_by"],
        done=row["done"],
        estimated=row["estimated"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        result=json.loads(result) if isinstance(result, str) else dict(result or {}),
    )


async def request_job(
    db: Db, tenant_id: str, kind: Kind, object_pair: str, salesforce_object: str, trigger: Trigger, requested_by: str
) -> Job:
    """File a job; :class:`ActiveJobError` when one of the kind already waits or runs for the pair
    (for a backfill: for any pair of the object, which share its backfill)."""
    row = await db.fetchrow(
        "INSERT INTO jobs (tenant_id, kind, object_pair, object, trigger, requested_by) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT DO NOTHING RETURNING id",
        tenant_id,
        kind,
        object_pair,
        salesforce_object,
        trigger,
        requested_by,
    )
    if row is None:
        active = await _active(db, tenant_id, kind, object_pair, salesforce_object)
        if active is None:  # finished in between: ask again
            return await request_job(db, tenant_id, kind, object_pair, salesforce_object, trigger, requested_by)
        raise ActiveJobError(active)
    found = await job_of(db, tenant_id, row["id"])
    assert found is not None
    return found


async def _active(db: Db, tenant_id: str, kind: Kind, object_pair: str, salesforce_object: str) -> Job | None:
    row = await db.fetchrow(
        _SELECT + " WHERE j.tenant_id = $1 AND j.kind = $2 AND j.status IN ('requested', 'running')"
        " AND (j.object_pair = $3 OR (j.kind = 'backfill' AND j.object = $4))",
        tenant_id,
        kind,
        object_pair,
        salesforce_object,
    )
    return _job(row) if row else None


async def job_of(db: Db, tenant_id: str, job_id: int) -> Job | None:
    row = await db.fetchrow(_SELECT + " WHERE j.tenant_id = $1 AND j.id = $2", tenant_id, job_id)
    return _job(row) if row else None


async def jobs_of(
    db: Db,
    tenant_id: str,
    *,
    kind: Kind | None = None,
    status: JobStatus | None = None,
    object_pair: str | None = None,
    active: bool = False,
    before: int | None = None,
    limit: int = 50,
) -> list[Job]:
    """The tenant's jobs, newest first (``active``: only those waiting or running; ``before``: only
    those with a smaller id, for paging)."""
    rows = await db.fetch(
        _SELECT + " WHERE j.tenant_id = $1 AND ($2::text IS NULL OR j.kind = $2)"
        " AND ($3::text IS NULL OR j.status = $3) AND ($4::text IS NULL OR j.object_pair = $4)"
        " AND (NOT $7 OR j.status IN ('requested', 'running'))"
        " AND ($5::bigint IS NULL OR j.id < $5) ORDER BY j.id DESC LIMIT $6",
        tenant_id,
        kind,
        status,
        object_pair,
        before,
        limit,
        active,
    )
    return [_job(r) for r in rows]


# --- cdc-ingest's side ---------------------------------------------------------------------------


async def requeue_interrupted(db: Db, tenant_id: str) -> int:
    """Jobs left running by the tenant's previous owner (a moved lease, a crash) wait to be claimed again."""
    status = await db.execute(
        "UPDATE jobs SET status = 'requested', updated_at = now() WHERE tenant_id = $1 AND status = 'running'",
        tenant_id,
    )
    return int(status.split()[-1])


async def open_job(
    db: Db, tenant_id: str, kind: Kind, object_pair: str, salesforce_object: str, trigger: Trigger, requested_by: str
) -> Job:
    """The job of ``kind`` for the pair that waits or runs (an interrupted one), or a new one, running."""
    while True:
        try:
            job = await request_job(db, tenant_id, kind, object_pair, salesforce_object, trigger, requested_by)
        except ActiveJobError as active:
            job = active.job
        await db.execute(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now()), updated_at = now()"
            " WHERE id = $1 AND status IN ('requested', 'running')",
            job.id,
        )
        running = await job_of(db, tenant_id, job.id)
        if running is not None and running.status == "running":
            return running


async def claim(db: Db, tenant_id: str, fence: str, holder: str) -> list[Job]:
    """Take every requested job of the tenant, oldest first, while ``fence`` (an SQL condition on
    $1 = tenant and $2 = holder) holds: only the replica holding the tenant's lease runs its jobs."""
    rows = await db.fetch(
        "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now()), updated_at = now()"
        f" WHERE tenant_id = $1 AND status = 'requested' AND {fence} RETURNING id",
        tenant_id,
        holder,
    )
    found = [await job_of(db, tenant_id, r["id"]) for r in sorted(rows, key=lambda r: r["id"])]
    return [j for j in found if j is not None]


async def save_progress(db: Db, job_id: int, done: int, estimated: int | None, result: dict[str, Any]) -> None:
    await db.execute(
        "UPDATE jobs SET done = $2, estimated = COALESCE($3, estimated), result = $4::jsonb, updated_at = now()"
        " WHERE id = $1 AND status = 'running'",
        job_id,
        done,
        estimated,
        json.dumps(result),
    )


async def finish(
    db: Db,
    job_id: int,
    status: Literal["succeeded", "failed"],
    *,
    done: int,
    estimated: int | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    await db.execute(
        "UPDATE jobs SET status = $2, done = GREATEST(done, $3), estimated = COALESCE($4, estimated),"
        " result = COALESCE($5::jsonb, result), error = $6, finished_at = now(), updated_at = now()"
        " WHERE id = $1 AND status = 'running'",
        job_id,
        status,
        done,
        estimated,
        None if result is None else json.dumps(result),
        error,
    )


async def last_reconciled(db: Db, tenant_id: str, object_pair: str) -> datetime | None:
    """When the pair's newest reconcile ended, or was asked for while it waits or runs (a schedule's
    reference point: measured from the end, a long reconcile is not followed at once by the next)."""
    value: datetime | None = await db.fetchval(
        "SELECT COALESCE(finished_at, created_at) FROM jobs WHERE tenant_id = $1 AND kind = 'reconcile'"
        " AND object_pair = $2 ORDER BY id DESC LIMIT 1",
        tenant_id,
        object_pair,
    )
    return value


async def note_error(db: Db, job_id: int, error: str) -> None:
    """Show why an attempt of a job that is tried again failed (the job goes on running)."""
    await db.execute("UPDATE jobs SET error = $2, updated_at = now() WHERE id = $1", job_id, error)


async def prune(db: Db, tenant_id: str, now: datetime) -> int:
    """Forget the tenant's jobs finished more than :data:`KEPT_FOR` ago, except each kind and pair's newest."""
    status = await db.execute(
        "DELETE FROM jobs j WHERE j.tenant_id = $1 AND j.finished_at < $2 AND EXISTS (SELECT 1 FROM jobs n"
        " WHERE n.tenant_id = j.tenant_id AND n.kind = j.kind AND n.object_pair = j.object_pair AND n.id > j.id)",
        tenant_id,
        now - KEPT_FOR,
    )
    return int(status.split()[-1])

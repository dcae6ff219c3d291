"""``/api/v1/tenants/{tenant}/jobs``: run a poll, backfill or reconcile of one object pair now, and see
every job's state and progress (:mod:`services.common.jobs`; cdc-ingest runs them,
:mod:`services.cdc_ingest.jobs`).

Asking is run control, an operator's job, and audited; any role in scope may look. The replica
serving the tenant claims a job within seconds. Asking while a job of the same kind waits or runs
for the pair answers that job (200, not 202): the work asked for is under way, follow it.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, request_id_of
from services.admin.api.tenants import pair_named, stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.health import reading_mode
from services.common.db import Connection
from services.common.jobs import ActiveJobError, Job, JobStatus, Kind, Trigger, job_of, jobs_of, request_job
from services.common.schema_store import latest_objects
from services.common.tenant_config import ObjectPair, StoredConfig

MAX_LIMIT = 200
# Ids are bigserial: a larger number names no job (and must not reach the database as one).
MAX_ID = 2**63 - 1


class JobRequest(ApiModel):
    # Only the wire names, as for every request body.
    model_config = ConfigDict(populate_by_name=False)

    kind: Kind = Field(
        description="`poll` (read what changed since the last poll: objects read by polling),"
        " `backfill` (re-read every record) or `reconcile` (compare Salesforce with what Duplex holds,"
        " window by window by count and checksum, and repair what differs)."
    )
    object_pair: str = Field(min_length=1, max_length=255, description="The object pair (any case).")


class JobView(ApiModel):
    id: int
    tenant: str
    kind: Kind
    object_pair: str
    object: str = Field(description="The pair's Salesforce object.")
    status: JobStatus = Field(description="`requested` until cdc-ingest claims it, then `running`, then the end.")
    trigger: Trigger = Field(description="`operator`, `schedule` (the pair's schedule) or `start` (first backfill).")
    requested_by: str
    done: int = Field(description="Records done: published (poll, backfill) or compared (reconcile).")
    estimated: int | None = Field(description="Salesforce's count of the pair's records when the job began.")
    percent: float | None = Field(description="Done of estimated (100 once succeeded).")
    records_per_second: float | None
    seconds_left: float | None = Field(description="At the rate so far, while running.")
    result: dict[str, Any] = Field(
        description="What the job found: records published; a reconcile's windows (count and checksum of each side"
        " for those that differ), differences by kind and the records re-read."
    )
    error: str | None = Field(description="Why a failed job failed.")
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None


class JobList(ApiModel):
    jobs: list[JobView] = Field(description="Newest first.")
    next_before: int | None = Field(description="Pass as `before` for the next page; null on the last page.")


def job_view(job: Job) -> JobView:
    fraction, rate, left = job.fraction, job.per_second, job.seconds_left
    return JobView(
        id=job.id,
        tenant=job.tenant_id,
        kind=job.kind,
        object_pair=job.object_pair,
        object=job.object,
        status=job.status,
        trigger=job.trigger,
        requested_by=job.requested_by,
        done=job.done,
        estimated=job.estimated,
        percent=None if fraction is None else round(100 * fraction, 1),
        records_per_second=None if rate is None else round(rate, 1),
        seconds_left=None if left is None else round(left, 1),
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


async def file_job(
    db: Connection,
    stored: StoredConfig,
    kind: Kind,
    pair: ObjectPair,
    principal: Principal,
    request: Request,
    response: Response,
) -> Job:
    """File an operator's job, audited (202), or answer the one of that kind already there (200)."""
    tenant = stored.tenant_id
    async with db.transaction():
        try:
            job = await request_job(db, tenant, kind, pair.name, pair.salesforce.object, "operator", principal.actor)
        except ActiveJobError as active:
            response.status_code = 200
            return active.job
        await write_audit(
            db,
            actor=principal.actor,
            tenant_id=tenant,
            action="job.requested",
            detail={"job": job.id, "kind": kind, "object_pair": pair.name, "version": stored.version},
            request_id=request_id_of(request),
        )
    return job


def jobs_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["jobs"])
    operate = access.require(Action.OPERATE)
    read = access.require(Action.READ)

    @router.get("/{tenant}/jobs", response_model=JobList, summary="The tenant's jobs, newest first")
    async def jobs(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
        kind: Annotated[Kind | None, Query(description="Only this kind.")] = None,
        status: Annotated[JobStatus | None, Query(description="Only this status.")] = None,
        pair: Annotated[str | None, Query(description="Only this object pair's.")] = None,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="`nextBefore` of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> JobList:
        stored = await stored_config(ConfigStore(db), tenant)
        # A pair since removed from the configuration still has its jobs: matched by name as given.
        known = {p.name.lower(): p.name for p in stored.config.spec.objects}
        name = known.get(pair.lower(), pair) if pair is not None else None
        found = await jobs_of(db, tenant, kind=kind, status=status, object_pair=name, before=before, limit=limit + 1)
        page = found[:limit]
        return JobList(
            jobs=[job_view(j) for j in page], next_before=page[-1].id if len(found) > limit and page else None
        )

    @router.get("/{tenant}/jobs/{job_id}", response_model=JobView, summary="One job's state and progress")
    async def job(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        job_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        db: Annotated[Connection, Depends(access.connection)],
    ) -> JobView:
        await stored_config(ConfigStore(db), tenant)
        found = await job_of(db, tenant, job_id)
        if found is None:
            raise ApiError(404, detail=f"tenant '{tenant}' has no job {job_id}")
        return job_view(found)

    @router.post(
        "/{tenant}/jobs",
        status_code=202,
        response_model=JobView,
        summary="Poll, backfill or reconcile one object pair now (200 with the job already waiting or running)",
        responses={200: {"model": JobView, "description": "A job of that kind already waits or runs for the pair."}},
        openapi_extra=json_body_schema(JobRequest),
    )
    async def run_job(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[JobRequest, Depends(json_body(JobRequest))],
        request: Request,
        response: Response,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> JobView:
        stored = await stored_config(ConfigStore(db), tenant)
        pair = pair_named(stored, body.object_pair, ("body", "objectPair"))
        if body.kind == "poll":
            described = await latest_objects(db, tenant, [pair.salesforce.object])
            if reading_mode(stored.config, next(iter(described.values()), None)) == "cdc":
                raise ApiError(
                    409,
                    detail=f"{pair.salesforce.object} is streamed by Change Data Capture: its changes arrive as events"
                    " and there is nothing to poll; ask for a reconcile to compare it with Salesforce",
                )
        return job_view(await file_job(db, stored, body.kind, pair, principal, request, response))

    return router

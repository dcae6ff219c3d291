"""``/api/v1/tenants/{tenant}/backfills``: ask cdc-ingest to re-read every record of one object,
and see how far each object's latest backfill has come.

Asking is run control, so an operator's job (``Action.OPERATE``); any role in scope may look. The
request is a backfill job (``/jobs``, :mod:`services.admin.api.jobs`) of the first pair syncing the
object; the replica serving the tenant starts it within seconds, counts the object's records and
saves its progress page by page.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.jobs import file_job
from services.admin.api.models import ApiModel
from services.admin.api.problems import INVALID_REQUEST, ApiError, FieldError
from services.admin.api.tenants import stored_config
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.common.backfills import Progress, Status, backfills_of
from services.common.db import Connection


class BackfillRequest(ApiModel):
    # Only the wire names, as for every request body.
    model_config = ConfigDict(populate_by_name=False)

    object: str = Field(
        min_length=1,
        max_length=255,
        description="A Salesforce object the tenant syncs (any case: account is Account).",
    )


class Backfill(ApiModel):
    tenant: str
    object: str = Field(description="The object as the tenant's configuration names it.")
    status: str = Field(
        description="`requested` (cdc-ingest picks it up within seconds), or the state of the backfill job already"
        " waiting or running (answered with 200)."
    )
    job: int = Field(description="The backfill's job (`GET .../jobs/{job}`).")


class BackfillProgress(ApiModel):
    tenant: str
    object: str
    status: Status = Field(description="`requested` until cdc-ingest has counted the object's records.")
    method: str = Field(description="`rest` or `bulk` (Bulk 2.0 query job), chosen from the count.")
    published: int = Field(description="Records published to crm-changes so far.")
    estimated: int | None = Field(description="The object's record count when reading began.")
    percent: float | None = Field(description="Published of estimated (100 once done).")
    started_at: datetime
    updated_at: datetime = Field(description="When progress was last saved (each page), or the end.")
    records_per_second: float | None = Field(description="The rate so far.")
    seconds_left: float | None = Field(description="At the rate so far, while running.")


class BackfillList(ApiModel):
    backfills: list[BackfillProgress] = Field(description="Each object's latest backfill, by object.")


def _progress(tenant: str, progress: Progress) -> BackfillProgress:
    fraction, rate, left = progress.fraction, progress.per_second, progress.seconds_left
    return BackfillProgress(
        tenant=tenant,
        object=progress.object,
        status=progress.status,
        method=progress.method,
        published=progress.emitted,
        estimated=progress.estimated,
        percent=None if fraction is None else round(100 * fraction, 1),
        started_at=progress.started_at,
        updated_at=progress.updated_at,
        records_per_second=None if rate is None else round(rate, 1),
        seconds_left=None if left is None else round(left, 1),
    )


def backfills_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["backfills"])
    operate = access.require(Action.OPERATE)
    read = access.require(Action.READ)

    @router.get("/{tenant}/backfills", response_model=BackfillList, summary="Each object's latest backfill")
    async def backfills(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> BackfillList:
        await stored_config(ConfigStore(db), tenant)
        return BackfillList(backfills=[_progress(tenant, p) for p in await backfills_of(db, tenant)])

    @router.get("/{tenant}/backfills/{object}", response_model=BackfillProgress, summary="One object's latest backfill")
    async def backfill_progress(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        object: str,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> BackfillProgress:
        await stored_config(ConfigStore(db), tenant)
        found = [p for p in await backfills_of(db, tenant) if p.object.lower() == object.lower()]
        if not found:
            raise ApiError(404, detail=f"tenant '{tenant}' has no backfill of {object}")
        return _progress(tenant, found[0])

    @router.post(
        "/{tenant}/backfills",
        status_code=202,
        response_model=Backfill,
        summary="Re-read every record of one object from Salesforce (200 with the backfill already under way)",
        openapi_extra=json_body_schema(BackfillRequest),
    )
    async def backfill(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[BackfillRequest, Depends(json_body(BackfillRequest))],
        request: Request,
        response: Response,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Backfill:
        stored = await stored_config(ConfigStore(db), tenant)
        pairs = stored.config.spec.objects
        found = next((p for p in pairs if p.salesforce.object.lower() == body.object.lower()), None)
        if found is None:
            synced = ", ".join(sorted({p.salesforce.object for p in pairs})) or "nothing"
            raise ApiError(
                422,
                title="Invalid request",
                detail="the body has invalid fields; see errors",
                type=INVALID_REQUEST,
                errors=[FieldError("object", f"tenant '{tenant}' does not sync {body.object} (it syncs {synced})")],
            )
        job = await file_job(db, stored, "backfill", found, principal, request, response)
        return Backfill(tenant=tenant, object=found.salesforce.object, status=job.status, job=job.id)

    return router

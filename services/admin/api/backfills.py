"""``/api/v1/tenants/{tenant}/backfills``: ask cdc-ingest to re-read every record of one object.

Run control, so an operator's job (``Action.OPERATE``). The request is the same row ``duplex backfill``
always wrote (:func:`services.common.backfills.request_backfill`); the replica serving the tenant
starts it within seconds.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.problems import INVALID_REQUEST, ApiError, FieldError, request_id_of
from services.admin.api.tenants import stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.common.backfills import request_backfill
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
    status: str = Field(description="Always `requested`: cdc-ingest picks it up within seconds.")


def backfills_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["backfills"])
    operate = access.require(Action.OPERATE)

    @router.post(
        "/{tenant}/backfills",
        status_code=202,
        response_model=Backfill,
        summary="Re-read every record of one object from Salesforce (a running backfill starts over)",
        openapi_extra=json_body_schema(BackfillRequest),
    )
    async def backfill(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[BackfillRequest, Depends(json_body(BackfillRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Backfill:
        stored = await stored_config(ConfigStore(db), tenant)
        configured = {pair.salesforce.object.lower(): pair.salesforce.object for pair in stored.config.spec.objects}
        name = configured.get(body.object.lower())
        if name is None:
            synced = ", ".join(sorted(configured.values())) or "nothing"
            raise ApiError(
                422,
                title="Invalid request",
                detail="the body has invalid fields; see errors",
                type=INVALID_REQUEST,
                errors=[FieldError("object", f"tenant '{tenant}' does not sync {body.object} (it syncs {synced})")],
            )
        async with db.transaction():
            await request_backfill(db, tenant, name)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action="backfill.requested",
                detail={"object": name, "version": stored.version},
                request_id=request_id_of(request),
            )
        return Backfill(tenant=tenant, object=name, status="requested")

    return router

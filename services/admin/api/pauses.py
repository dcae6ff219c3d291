"""``/api/v1/tenants/{tenant}/pauses``, ``…/pause`` and ``…/resume``: stop one direction (or both)
of a tenant's syncing, for one object pair or all of them, and start it again
(:mod:`services.common.pauses`).

The conflict-resolver honours a pause from its next batch on, and other tenants flow on through the
same partitions. A pair paused both ways has its changes held undecided (one insert each) and
decided in order on resume; a pair paused one way has its changes decided as they come, what it
would send that way held and released on resume in the order it was decided.
Pausing and resuming are run control, an operator's job, and audited; any role may look.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, request_id_of
from services.admin.api.tenants import pair_named, stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.common.db import Connection
from services.common.pauses import EVERY_PAIR, Way, held_inputs_of, held_of, pause, pauses_of, resume
from services.common.tenant_config import StoredConfig

Direction = Literal["to_crm", "to_app", "both"]
_WAYS: dict[str, tuple[Way, ...]] = {"to_crm": (Way.TO_CRM,), "to_app": (Way.TO_APP,), "both": tuple(Way)}


class PauseRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    object_pair: str | None = Field(
        default=None, min_length=1, max_length=255, description="One object pair; every pair when left out."
    )
    direction: Direction = Field(
        default="both", description="`to_crm` (writes to Salesforce), `to_app` (updates to the app) or both."
    )
    reason: str | None = Field(default=None, max_length=500, description="Why (kept with the pause and audited).")


class ResumeRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    object_pair: str | None = Field(default=None, min_length=1, max_length=255, description="As it was paused.")
    direction: Direction = "both"


class PauseEntry(ApiModel):
    object_pair: str = Field(description="The pair, or `*` for every pair of the tenant.")
    direction: Literal["to_crm", "to_app"]
    reason: str | None
    actor: str
    paused_at: datetime


class HeldEntry(ApiModel):
    object_pair: str
    direction: Literal["to_crm", "to_app"]
    outputs: int = Field(description="Salesforce writes or app updates waiting, released in order on resume.")
    oldest: datetime


class HeldInputsEntry(ApiModel):
    object_pair: str
    changes: int = Field(
        description="Changes waiting undecided (the pair is paused both ways), decided in order on resume."
    )
    oldest: datetime


class PauseState(ApiModel):
    tenant: str
    pauses: list[PauseEntry]
    held: list[HeldEntry] = Field(
        description="Outputs the pauses hold (and, just after a resume, what is still releasing)."
    )
    held_inputs: list[HeldInputsEntry] = Field(
        description="Changes held undecided for pairs paused both ways (and, after a resume, still being decided)."
    )


async def pause_state(db: Connection, tenant: str) -> PauseState:
    return PauseState(
        tenant=tenant,
        pauses=[
            PauseEntry(
                object_pair=p.object_pair, direction=p.way, reason=p.reason, actor=p.actor, paused_at=p.paused_at
            )
            for p in await pauses_of(db, tenant)
        ],
        held=[
            HeldEntry(object_pair=h.object_pair, direction=h.way, outputs=h.outputs, oldest=h.oldest)
            for h in await held_of(db, tenant)
        ],
        held_inputs=[
            HeldInputsEntry(object_pair=h.object_pair, changes=h.changes, oldest=h.oldest)
            for h in await held_inputs_of(db, tenant)
        ],
    )


def _pair(stored: StoredConfig, name: str | None) -> str:
    """The pair named, as the configuration spells it (``*`` for none); a 422 when it has no such pair."""
    return EVERY_PAIR if name is None else pair_named(stored, name, ("body", "objectPair")).name


def pauses_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["pauses"])
    read = access.require(Action.READ)
    operate = access.require(Action.OPERATE)

    @router.get("/{tenant}/pauses", response_model=PauseState, summary="What is paused, and what the pauses hold")
    async def pauses(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> PauseState:
        await stored_config(ConfigStore(db), tenant)
        return await pause_state(db, tenant)

    @router.post(
        "/{tenant}/pause",
        response_model=PauseState,
        summary="Pause one direction (or both) of one object pair or of all of them",
        openapi_extra=json_body_schema(PauseRequest),
    )
    async def pause_sync(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[PauseRequest, Depends(json_body(PauseRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> PauseState:
        pair = _pair(await stored_config(ConfigStore(db), tenant), body.object_pair)
        ways = _WAYS[body.direction]
        async with db.transaction():
            await pause(db, tenant, [pair], ways, principal.actor, body.reason)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action="sync.paused",
                detail={"object_pair": pair, "direction": body.direction, "reason": body.reason},
                request_id=request_id_of(request),
            )
        return await pause_state(db, tenant)

    @router.post(
        "/{tenant}/resume",
        response_model=PauseState,
        summary="End the pauses of one object pair, or (without object_pair) all; what they held is released in order",
        openapi_extra=json_body_schema(ResumeRequest),
    )
    async def resume_sync(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[ResumeRequest, Depends(json_body(ResumeRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> PauseState:
        pair = _pair(await stored_config(ConfigStore(db), tenant), body.object_pair)
        ways = _WAYS[body.direction]
        async with db.transaction():
            # Read where it is acted on: a tenant-wide pause set meanwhile is seen.
            covering = [p for p in await pauses_of(db, tenant) if p.object_pair == EVERY_PAIR and p.way in ways]
            if pair != EVERY_PAIR and covering:
                raise ApiError(
                    409,
                    detail=f"tenant '{tenant}' is paused {covering[0].way} for every pair; resume without object_pair"
                    " to resume every pair (nothing was resumed)",
                )
            await resume(db, tenant, None if pair == EVERY_PAIR else [pair], ways)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action="sync.resumed",
                detail={"object_pair": pair, "direction": body.direction},
                request_id=request_id_of(request),
            )
        return await pause_state(db, tenant)

    return router

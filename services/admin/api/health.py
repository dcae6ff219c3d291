"""``/api/v1/tenants/{tenant}/health``: quarantined object pairs, pauses and the last day's problems."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.models import ApiModel
from services.admin.api.pauses import PauseEntry, pause_state
from services.admin.api.tenants import stored_config
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.health import PROBLEM_WINDOW, problem_counts, quarantine_events, quarantined
from services.common.db import Connection


class QuarantinedPair(ApiModel):
    pair: str = Field(description="The object pair, or `<side>:<object>` for an object no pair maps.")
    since: datetime
    reason: str
    configuration_version: int = Field(
        description="Applying a new version ends the quarantine (so does mapping's cool-off, 15 minutes by default)."
    )


class Problems(ApiModel):
    event: str = Field(description="The sync-log event, such as `write.rejected` or `change.rejected`.")
    code: str = Field(description="Salesforce's error code, or Duplex's own reason code.")
    count: int
    last_at: datetime


class TenantHealth(ApiModel):
    tenant: str
    status: Literal["ok", "attention"] = Field(
        description="`attention` when a pair is quarantined or problems occurred."
    )
    configuration_version: int
    quarantined_pairs: list[QuarantinedPair] = Field(
        description="Pairs whose changes are dead-lettered (replay them once the cause is fixed)."
    )
    pauses: list[PauseEntry] = Field(description="Directions paused (`duplex resume` ends them).")
    problems_since: datetime
    problems: list[Problems] = Field(description="Sync-log rows with an error code in the last 24 hours.")


def health_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["health"])
    read = access.require(Action.READ)

    @router.get(
        "/{tenant}/health", response_model=TenantHealth, summary="Quarantined pairs, pauses and the last day's problems"
    )
    async def health(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> TenantHealth:
        stored = await stored_config(ConfigStore(db), tenant)
        since = datetime.now(UTC) - PROBLEM_WINDOW
        pairs = quarantined(await quarantine_events(db, tenant), stored.version)
        problems = await problem_counts(db, tenant, since)
        return TenantHealth(
            tenant=tenant,
            status="attention" if pairs or problems else "ok",
            configuration_version=stored.version,
            quarantined_pairs=[
                QuarantinedPair(
                    pair=q.pair, since=q.since, reason=q.reason, configuration_version=q.configuration_version
                )
                for q in pairs
            ],
            pauses=(await pause_state(db, tenant)).pauses,
            problems_since=since,
            problems=[Problems(event=p.event, code=p.code, count=p.count, last_at=p.last_at) for p in problems],
        )

    return router

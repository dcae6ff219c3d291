"""``/api/v1/tenants/{tenant}/health``: quarantined object pairs, pauses, the last day's problems, the
last sync each way, the API budget, how each object is read and the rules the org's schema breaks."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.jobs import JobView, job_view
from services.admin.api.models import ApiModel
from services.admin.api.pauses import PauseEntry, pause_state
from services.admin.api.schema import WarningItem, warning_item
from services.admin.api.tenants import stored_config
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.health import (
    PROBLEM_WINDOW,
    api_budget,
    budget_state,
    last_syncs,
    problem_counts,
    quarantine_events,
    quarantined,
    reading_mode,
    throughput,
)
from services.common.db import Connection
from services.common.jobs import jobs_of
from services.common.schema_drift import standing_warnings
from services.common.schema_store import DescribedObject, latest_objects
from services.common.tenant_config import TenantConfig


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


class LastSync(ApiModel):
    to_crm: datetime | None = Field(description="The last record written to Salesforce in the last 24 hours.")
    to_app: datetime | None = Field(description="The last update published to the app in the last 24 hours.")


class Budget(ApiModel):
    daily_api_cap: int = Field(description="The tenant's `dailyApiCap`.")
    calls_last_day: int = Field(description="API calls the governor granted the tenant in the last 24 hours.")
    org_used: int | None = Field(description="The org's DailyApiRequests used, as Salesforce last reported it.")
    org_max: int | None
    org_observed_at: datetime | None
    low: bool = Field(description="Under 10 % left of the cap or of the org's allocation.")
    calls_by_hour: list[int] = Field(
        description="Calls granted in each of the last 24 hours, oldest first (the last is the hour to now)."
    )


class ThroughputView(ApiModel):
    tenant: str
    hours: int
    to_crm: list[int] = Field(description="Records written to Salesforce in each hour, oldest first.")
    to_app: list[int] = Field(description="Updates published to the app in each hour, oldest first.")


class ObjectReading(ApiModel):
    object: str
    mode: Literal["cdc", "polling", "unknown"] = Field(
        description="`polling` when the tenant does not stream or the org does not select the object for CDC;"
        " `unknown` until the selection was read (a schema refresh)."
    )
    described_at: datetime | None


class TenantHealth(ApiModel):
    tenant: str
    status: Literal["ok", "attention"] = Field(
        description="`attention` when a pair is quarantined, problems occurred, a rule is paused by schema drift"
        " or the API budget is low."
    )
    configuration_version: int
    quarantined_pairs: list[QuarantinedPair] = Field(
        description="Pairs whose changes are dead-lettered (replay them once the cause is fixed)."
    )
    pauses: list[PauseEntry] = Field(description="Directions paused (`duplex resume` ends them).")
    problems_since: datetime
    problems: list[Problems] = Field(description="Sync-log rows with an error code in the last 24 hours.")
    last_sync: LastSync
    budget: Budget | None = Field(description="Null until the governor has granted the tenant a call.")
    objects: list[ObjectReading]
    drift: list[WarningItem] = Field(description="Rules the org's schema breaks now (`GET .../schema/drift`).")
    jobs: list[JobView] = Field(description="Polls, backfills and reconciles waiting or running, oldest first.")


def _mapped(config: TenantConfig) -> list[str]:
    return list(dict.fromkeys(pair.salesforce.object for pair in config.spec.objects))


def object_reading(config: TenantConfig, name: str, described: Mapping[str, DescribedObject]) -> ObjectReading:
    found = next((d for d in described.values() if d.name.lower() == name.lower()), None)
    return ObjectReading(
        object=name,
        mode=reading_mode(config, found),
        described_at=found.described_at if found is not None else None,
    )


def health_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["health"])
    read = access.require(Action.READ)

    @router.get(
        "/{tenant}/health",
        response_model=TenantHealth,
        summary="Quarantined pairs, pauses, the last day's problems, last sync each way, API budget, objects, drift",
    )
    async def health(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> TenantHealth:
        stored = await stored_config(ConfigStore(db), tenant)
        now = datetime.now(UTC)
        since = now - PROBLEM_WINDOW
        pairs = quarantined(await quarantine_events(db, tenant), stored.version)
        problems = await problem_counts(db, tenant, since)
        synced = await last_syncs(db, tenant, since)
        state = await budget_state(db, tenant)
        budget = None if state is None else api_budget(state, stored.config.spec.salesforce.daily_api_cap, now)
        described = await latest_objects(db, tenant)
        objects = {d.name.lower(): d.object for d in described.values()}
        cdc = {d.name.lower(): d.cdc_selected for d in described.values()}
        drift = standing_warnings(stored.config, objects, cdc)
        attention = bool(pairs or problems or any(w.paused for w in drift) or (budget is not None and budget.low))
        return TenantHealth(
            tenant=tenant,
            status="attention" if attention else "ok",
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
            last_sync=LastSync(to_crm=synced.to_crm, to_app=synced.to_app),
            budget=None
            if budget is None
            else Budget(
                daily_api_cap=budget.daily_cap,
                calls_last_day=budget.duplex_calls,
                org_used=budget.org_used,
                org_max=budget.org_max,
                org_observed_at=budget.org_observed_at,
                low=budget.low,
                calls_by_hour=list(budget.hourly),
            ),
            objects=[object_reading(stored.config, name, described) for name in _mapped(stored.config)],
            drift=[warning_item(w) for w in drift],
            jobs=[job_view(j) for j in reversed(await jobs_of(db, tenant, active=True))],
        )

    @router.get(
        "/{tenant}/throughput",
        response_model=ThroughputView,
        summary="Records synced each way in each of the last hours (from the sync log)",
    )
    async def hourly(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
        hours: Annotated[int, Query(ge=1, le=168, description="How many hours back, to now.")] = 24,
    ) -> ThroughputView:
        await stored_config(ConfigStore(db), tenant)
        counted = await throughput(db, tenant, datetime.now(UTC), hours)
        return ThroughputView(tenant=tenant, hours=hours, to_crm=list(counted.to_crm), to_app=list(counted.to_app))

    return router

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
    ApiBudget,
    LastSyncs,
    api_budget,
    budget_states,
    last_syncs,
    needs_attention,
    problem_counts,
    quarantine_events,
    quarantined,
    reading_mode,
    throughput,
)
from services.common.db import Connection
from services.common.jobs import jobs_of
from services.common.schema_drift import RuleWarning, standing_warnings
from services.common.schema_store import ObjectState, described_objects
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
    to_crm_lag_seconds: float | None = Field(
        description="How long after its origin's commit that write happened (the batch's slowest record);"
        " null when unknown."
    )
    to_app_lag_seconds: float | None = Field(
        description="How long after its origin's commit that update was decided; null when unknown."
    )


def last_sync(synced: LastSyncs) -> LastSync:
    return LastSync(
        to_crm=synced.to_crm,
        to_app=synced.to_app,
        to_crm_lag_seconds=synced.to_crm_lag,
        to_app_lag_seconds=synced.to_app_lag,
    )


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
    to_crm_lag_seconds: list[float | None] = Field(
        description="The largest lag, origin commit to write, of each hour's writes to Salesforce, oldest first;"
        " null for an hour that logged none."
    )
    to_app_lag_seconds: list[float | None] = Field(
        description="The largest lag, origin commit to decision, of each hour's updates to the app, oldest first;"
        " null for an hour that logged none."
    )


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
    problems: list[Problems] = Field(
        description="Sync-log rows with an error code in the last 24 hours (a conflict's decision is not one;"
        " a rejected write counts once)."
    )
    last_sync: LastSync
    budget: Budget | None = Field(description="Null until the governor has granted the tenant a call.")
    objects: list[ObjectReading]
    drift: list[WarningItem] = Field(description="Rules the org's schema breaks now (`GET .../schema/drift`).")
    jobs: list[JobView] = Field(description="Polls, backfills and reconciles waiting or running, oldest first.")


def mapped_objects(config: TenantConfig) -> list[str]:
    """The Salesforce objects the tenant's pairs map, each once, in the configuration's order."""
    return list(dict.fromkeys(pair.salesforce.object for pair in config.spec.objects))


def object_reading(config: TenantConfig, name: str, described: Mapping[str, ObjectState]) -> ObjectReading:
    """How ``name`` is read; ``described`` is by lowercase name (:func:`described_objects`)."""
    found = described.get(name.lower())
    return ObjectReading(
        object=name,
        mode=reading_mode(config, found),
        described_at=found.described_at if found is not None else None,
    )


def drift_of(config: TenantConfig, described: Mapping[str, ObjectState]) -> list[RuleWarning]:
    objects = {key: d.object for key, d in described.items()}
    cdc = {key: d.cdc_selected for key, d in described.items()}
    return standing_warnings(config, objects, cdc)


def tenant_budget(state: object, config: TenantConfig, now: datetime) -> ApiBudget | None:
    """None until the governor has granted the tenant a call."""
    return None if state is None else api_budget(state, config.spec.salesforce.daily_api_cap, now)


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
        config = stored.config
        pairs = quarantined((await quarantine_events(db, [tenant])).get(tenant, []), stored.version)
        problems = (await problem_counts(db, [tenant], since)).get(tenant, [])
        synced = (await last_syncs(db, [tenant], since))[tenant]
        budget = tenant_budget((await budget_states(db, [tenant])).get(tenant), config, now)
        described = (await described_objects(db, {tenant: mapped_objects(config)})).get(tenant, {})
        drift = drift_of(config, described)
        return TenantHealth(
            tenant=tenant,
            status="attention" if needs_attention(pairs, problems, drift, budget) else "ok",
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
            last_sync=last_sync(synced),
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
            objects=[object_reading(config, name, described) for name in mapped_objects(config)],
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
        return ThroughputView(
            tenant=tenant,
            hours=hours,
            to_crm=list(counted.to_crm),
            to_app=list(counted.to_app),
            to_crm_lag_seconds=list(counted.to_crm_lag),
            to_app_lag_seconds=list(counted.to_app_lag),
        )

    return router

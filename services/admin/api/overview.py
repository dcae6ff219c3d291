"""``/api/v1/overview``: every tenant the caller may read, each as the console's tenant card.

The cards are computed set-based: each of the health reads (:mod:`services.admin.health`) runs once
for every tenant at the same time, so fifty cards cost the same ten queries as one. A card's status is
decided by the same rule, from the same reads, as ``/tenants/{tenant}/health``. A tenant whose stored
configuration no longer validates gets a card saying so instead of failing everyone's overview.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

import json
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.health import (
    LastSync,
    ObjectReading,
    drift_of,
    last_sync,
    mapped_objects,
    object_reading,
    tenant_budget,
)
from services.admin.api.models import ApiModel
from services.admin.auth import Action, Principal
from services.admin.health import (
    PROBLEM_WINDOW,
    active_jobs,
    budget_states,
    connection_states,
    last_syncs,
    needs_attention,
    pause_counts,
    problem_counts,
    quarantine_events,
    quarantined,
)
from services.common.db import Connection
from services.common.schema_store import described_objects
from services.common.tenant_config import ConfigInvalidError, TenantConfig, parse_tenant_config


class CardConnection(ApiModel):
    status: Literal["not_connected", "connected", "needs_reconnect", "revoked", "error"] = Field(
        description="As `GET /tenants/{tenant}/connection` tells it."
    )
    org_id: str | None = Field(description="The connected org's id.")


class BudgetSummary(ApiModel):
    calls_last_day: int = Field(description="API calls the governor granted the tenant in the last 24 hours.")
    daily_api_cap: int = Field(description="The tenant's `dailyApiCap`.")
    low: bool = Field(description="Under 10 % left of the cap or of the org's allocation.")


class TenantCard(ApiModel):
    name: str
    status: Literal["ok", "attention"] = Field(
        description="As the tenant's `/health` decides it: `attention` when a pair is quarantined, problems"
        " occurred, a rule is paused by schema drift or the API budget is low (or the stored configuration no"
        " longer validates)."
    )
    configuration_version: int
    configuration_error: str | None = Field(
        description="Why the stored configuration no longer validates (only possible after the schema tightened)."
    )
    connection: CardConnection
    objects: list[ObjectReading] = Field(description="How each mapped Salesforce object is read.")
    last_sync: LastSync
    errors: int = Field(description="Problems in the last 24 hours: the sum of the tenant's `/health` problems.")
    quarantined_pairs: int = Field(description="Pairs quarantined now.")
    pauses: int = Field(description="Directions paused (of a pair, or of every pair).")
    active_jobs: int = Field(description="Polls, backfills and reconciles waiting or running.")
    budget: BudgetSummary | None = Field(description="Null until the governor has granted the tenant a call.")


class Overview(ApiModel):
    problems_since: datetime = Field(description="Where the cards' 24 hours of errors begin.")
    tenants: list[TenantCard] = Field(description="The tenants the caller may read, by name.")


# The current version of each tenant that is not deleted (config_versions' rule), of those in $1
# when given: its newest.
_CURRENT = """
    SELECT DISTINCT ON (c.tenant_id) c.tenant_id, c.version
    FROM config_history c
    JOIN tenants t ON t.id = c.tenant_id AND t.deleted_at IS NULL
    WHERE $1::text[] IS NULL OR c.tenant_id = ANY($1::text[])
    ORDER BY c.tenant_id, c.version DESC
"""
_DOCUMENTS = """
    SELECT c.tenant_id, c.version, c.document
    FROM config_history c
    JOIN unnest($1::text[], $2::int[]) AS w (tenant_id, version) ON w.tenant_id = c.tenant_id AND w.version = c.version
"""


def _parse(document: object) -> TenantConfig | str:
    """The configuration, or why it no longer validates."""
    try:
        return parse_tenant_config(document)
    except ConfigInvalidError as exc:
        return str(exc)


class ParsedConfigs:
    """Tenants' configurations by version, each parsed once: a version never changes once applied
    (numbers are never reused, see config_history), and parsing fifty of them on every overview
    cost more than all its queries. The least recently used are dropped past ``size``."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._parsed: OrderedDict[tuple[str, int], TenantConfig | str] = OrderedDict()

    async def current(self, db: Connection, among: frozenset[str] | None) -> list[tuple[str, int, TenantConfig | str]]:
        """(tenant, version, its configuration or why it no longer validates), by tenant."""
        rows = await db.fetch(_CURRENT, None if among is None else sorted(among))
        wanted = [(r["tenant_id"], r["version"]) for r in rows]
        missing = [key for key in wanted if key not in self._parsed]
        if missing:
            documents = await db.fetch(_DOCUMENTS, [t for t, _ in missing], [v for _, v in missing])
            for d in documents:
                self._parsed[(d["tenant_id"], d["version"])] = _parse(_document(d["document"]))
        found = []
        for key in wanted:
            self._parsed.move_to_end(key)
            found.append((*key, self._parsed[key]))
        while len(self._parsed) > self._size:
            self._parsed.popitem(last=False)
        return found


async def overview(db: Connection, configs: ParsedConfigs, among: frozenset[str] | None, now: datetime) -> Overview:
    """The cards of the tenants in ``among`` (every tenant when None), by name."""
    current = await configs.current(db, among)
    names = [name for name, _, _ in current]
    valid = {name: config for name, _, config in current if isinstance(config, TenantConfig)}
    since = now - PROBLEM_WINDOW
    events = await quarantine_events(db, names)
    problems = await problem_counts(db, names, since)
    synced = await last_syncs(db, names, since)
    budgets = await budget_states(db, names)
    described = await described_objects(db, {name: mapped_objects(config) for name, config in valid.items()})
    jobs = await active_jobs(db, names)
    pauses = await pause_counts(db, names)
    connections = await connection_states(db, names)
    cards = []
    for name, version, config in current:
        tenant_problems = problems.get(name, [])
        pairs = quarantined(events.get(name, []), version)
        if isinstance(config, TenantConfig):
            objects = described.get(name, {})
            budget = tenant_budget(budgets.get(name), config, now)
            attention = needs_attention(pairs, tenant_problems, drift_of(config, objects), budget)
            readings = [object_reading(config, o, objects) for o in mapped_objects(config)]
            error = None
        else:
            budget, attention, readings, error = None, True, [], config
        connection = connections[name]
        cards.append(
            TenantCard(
                name=name,
                status="attention" if attention else "ok",
                configuration_version=version,
                configuration_error=error,
                connection=CardConnection(status=connection.status.value, org_id=connection.org_id),
                objects=readings,
                last_sync=last_sync(synced[name]),
                errors=sum(p.count for p in tenant_problems),
                quarantined_pairs=len(pairs),
                pauses=pauses.get(name, 0),
                active_jobs=jobs.get(name, 0),
                budget=None
                if budget is None
                else BudgetSummary(calls_last_day=budget.duplex_calls, daily_api_cap=budget.daily_cap, low=budget.low),
            )
        )
    return Overview(problems_since=since, tenants=cards)


def _document(value: object) -> object:
    # asyncpg hands jsonb over as text unless a codec is set on the connection.
    return json.loads(value) if isinstance(value, str) else value


def overview_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["health"])
    read = access.require(Action.READ)
    configs = ParsedConfigs()

    @router.get(
        "/overview",
        response_model=Overview,
        summary="Every tenant the caller may read at a glance: status, connection, objects, last sync and lag each"
        " way, the last day's errors, quarantines, pauses, jobs, API budget",
        description="One card per tenant, computed for all of them at once; a token scoped to some tenants sees"
        " only those. Each card's status and counts agree with the tenant's `/health`.",
    )
    async def tenants_overview(
        principal: Annotated[Principal, Depends(read)],
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Overview:
        return await overview(db, configs, principal.tenants, datetime.now(UTC))

    return router

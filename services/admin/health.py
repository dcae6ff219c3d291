"""A tenant's health at a glance: quarantined object pairs, recent problems, the last sync each way,
the API budget, how each object is read and what the org's schema breaks.

Mapping quarantines a pair whose input is mostly bad (:mod:`services.mapping.quarantine`) and says
so in the sync log: ``pair.quarantined`` when it begins, ``pair.released`` when it ends. A
quarantine also ends when the tenant's configuration version changes, so one begun under an older
version is over even before mapping wrote its release (it writes it with the pair's next change).
Problems are the sync-log rows carrying an error code (Salesforce's, or Duplex's own reason), but
for two kinds of row: a ``conflict.decided`` row carries the policy that decided in ``code`` (a
decision, not an error), and a write Salesforce rejected is logged twice, by the writer and again by
the conflict-resolver when it rolls the link back; only the writer's row is counted.

Every read takes a list of tenants and answers for all of them in one query, so the tenants'
overview costs the same few queries for fifty tenants as one tenant's health does for one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from services.common.connections import ConnectionStatus
from services.common.db import Connection
from services.common.schema_drift import RuleWarning
from services.common.schema_store import DescribedObject, ObjectState
from services.common.tenant_config import TenantConfig

QUARANTINE_EVENTS = ("pair.quarantined", "pair.released")
PROBLEM_WINDOW = timedelta(hours=24)
# Under this share of an allowance left, the budget needs attention (the governor warns at the same).
LOW_BUDGET = 0.10


@dataclass(frozen=True)
class Quarantine:
    pair: str
    since: datetime
    reason: str
    configuration_version: int


@dataclass(frozen=True)
class ProblemCount:
    event: str
    code: str
    count: int
    last_at: datetime


@dataclass(frozen=True)
class QuarantineEvent:
    """One ``pair.quarantined`` or ``pair.released`` row, oldest first."""

    event: str
    at: datetime
    message: str
    detail: dict[str, Any]


def quarantined(events: Sequence[QuarantineEvent], current_version: int) -> list[Quarantine]:
    """The pairs still quarantined: their last event began a quarantine under the current version."""
    last: dict[str, QuarantineEvent] = {}
    for event in events:
        last[str(event.detail.get("pair", ""))] = event
    return [
        Quarantine(pair, event.at, event.message, current_version)
        for pair, event in sorted(last.items())
        if event.event == "pair.quarantined" and event.detail.get("configuration_version") == current_version
    ]


def _by_tenant(tenants: Collection[str]) -> list[str]:
    return sorted(set(tenants))


async def quarantine_events(conn: Connection, tenants: Collection[str]) -> dict[str, list[QuarantineEvent]]:
    """Each tenant's quarantine events, oldest first (a tenant with none is absent)."""
    # The events spelt out, not a parameter: the partial index sync_log_quarantine is only usable
    # when the planner can see the query's events are the index's.
    rows = await conn.fetch(
        "SELECT tenant_id, event, at, message, detail FROM sync_log WHERE tenant_id = ANY($1::text[])"
        f" AND event IN ({', '.join(repr(e) for e in QUARANTINE_EVENTS)}) ORDER BY tenant_id, id",
        _by_tenant(tenants),
    )
    found: dict[str, list[QuarantineEvent]] = {}
    for r in rows:
        found.setdefault(r["tenant_id"], []).append(
            QuarantineEvent(r["event"], r["at"], r["message"] or "", _detail(r["detail"]))
        )
    return found


# Rows with a code that are not problems: a conflict's decision carries the policy in ``code``, and
# the conflict-resolver's row of a rejected write (the one carrying the write's version, as
# services.admin.retries tells them apart) repeats the writer's row of the same rejection.
_PROBLEM = (
    "code IS NOT NULL AND event <> 'conflict.decided'"
    # IS DISTINCT FROM: a row without a version (null here) must stay in, not vanish in a null.
    " AND (event <> 'write.rejected' OR jsonb_typeof(detail->'version') IS DISTINCT FROM 'number')"
)


async def problem_counts(conn: Connection, tenants: Collection[str], since: datetime) -> dict[str, list[ProblemCount]]:
    """Each tenant's problems since ``since``, counted per event and code, most first (a tenant with
    none is absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, event, code, count(*) AS n, max(at) AS last_at FROM sync_log"
        f" WHERE tenant_id = ANY($1::text[]) AND at >= $2 AND {_PROBLEM}"
        " GROUP BY tenant_id, event, code ORDER BY tenant_id, n DESC, event, code",
        _by_tenant(tenants),
        since,
    )
    found: dict[str, list[ProblemCount]] = {}
    for r in rows:
        found.setdefault(r["tenant_id"], []).append(ProblemCount(r["event"], r["code"], r["n"], r["last_at"]))
    return found


def _detail(value: Any) -> dict[str, Any]:
    # asyncpg hands jsonb over as text unless a codec is set on the connection.
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


# The last sync each way, as the sync log tells it: the writer's row of a batch written to
# Salesforce, and the conflict-resolver's row of a change that sent the app an update (not one a
# pause held). Both carry ``detail.lag_ms`` since they were taught to: from the origin's commit to
# the write (the batch's largest) or to the decision.
_TO_CRM = "event = 'write.succeeded'"
_TO_APP = "event = 'change.resolved' AND detail->'writes' ? 'app' AND NOT (detail->'writes'->'app' ? 'held')"
_LAG_SECONDS = "(CASE WHEN jsonb_typeof(detail->'lag_ms') = 'number' THEN (detail->>'lag_ms')::float8 / 1000 END)"


@dataclass(frozen=True)
class LastSyncs:
    """The last record written to Salesforce, and the last update published to the app, if any recent;
    with how long after the origin's commit each happened (None: not logged, as before lags were)."""

    to_crm: datetime | None
    to_app: datetime | None
    to_crm_lag: float | None = None
    to_app_lag: float | None = None


_NEWEST = (
    "SELECT t.tenant_id, s.at, s.lag FROM unnest($1::text[]) AS t (tenant_id)"
    " CROSS JOIN LATERAL (SELECT at, {lag} AS lag FROM sync_log WHERE tenant_id = t.tenant_id AND at >= $2"
    " AND {event} ORDER BY at DESC, id DESC LIMIT 1) s"
)


async def last_syncs(conn: Connection, tenants: Collection[str], since: datetime) -> dict[str, LastSyncs]:
    """Each tenant's last sync each way since ``since`` (every tenant asked for has an entry)."""
    names = _by_tenant(tenants)
    # Newest first along (tenant_id, at) for each tenant: the first row of the event found ends the scan.
    to_crm = {
        r["tenant_id"]: r for r in await conn.fetch(_NEWEST.format(lag=_LAG_SECONDS, event=_TO_CRM), names, since)
    }
    to_app = {
        r["tenant_id"]: r for r in await conn.fetch(_NEWEST.format(lag=_LAG_SECONDS, event=_TO_APP), names, since)
    }
    found = {}
    for name in names:
        crm, app = to_crm.get(name), to_app.get(name)
        found[name] = LastSyncs(
            to_crm=crm["at"] if crm else None,
            to_app=app["at"] if app else None,
            to_crm_lag=crm["lag"] if crm else None,
            to_app_lag=app["lag"] if app else None,
        )
    return found


@dataclass(frozen=True)
class Throughput:
    """Records synced each way in each of the last hours, oldest first (the last is the hour to now),
    and each hour's largest lag each way in seconds (None: no row of the hour logged one)."""

    to_crm: tuple[int, ...]
    to_app: tuple[int, ...]
    to_crm_lag: tuple[float | None, ...] = ()
    to_app_lag: tuple[float | None, ...] = ()


async def throughput(conn: Connection, tenant_id: str, now: datetime, hours: int = 24) -> Throughput:
    """Counted from the sync log as :func:`last_syncs` reads it: records written to Salesforce, and
    resolved changes that sent the app an update (not held by a pause)."""
    since = now - timedelta(hours=hours)
    rows = await conn.fetch(
        "SELECT floor(extract(epoch FROM at - $2::timestamptz) / 3600)::int AS hour,"
        # The writer logs one write.succeeded row per batch, with how many records it wrote.
        f" COALESCE(sum(COALESCE((detail->>'count')::int, 1)) FILTER (WHERE {_TO_CRM}), 0) AS to_crm,"
        f" count(*) FILTER (WHERE {_TO_APP}) AS to_app,"
        f" max({_LAG_SECONDS}) FILTER (WHERE {_TO_CRM}) AS to_crm_lag,"
        f" max({_LAG_SECONDS}) FILTER (WHERE {_TO_APP}) AS to_app_lag"
        " FROM sync_log WHERE tenant_id = $1 AND at > $2 AND at <= $3"
        " AND event IN ('write.succeeded', 'change.resolved') GROUP BY 1",
        tenant_id,
        since,
        now,
    )
    to_crm, to_app = [0] * hours, [0] * hours
    crm_lag: list[float | None] = [None] * hours
    app_lag: list[float | None] = [None] * hours
    for row in rows:
        hour = min(hours - 1, max(0, row["hour"]))
        to_crm[hour] += row["to_crm"]
        to_app[hour] += row["to_app"]
        crm_lag[hour] = _larger(crm_lag[hour], row["to_crm_lag"])
        app_lag[hour] = _larger(app_lag[hour], row["to_app_lag"])
    return Throughput(tuple(to_crm), tuple(to_app), tuple(crm_lag), tuple(app_lag))


def _larger(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class ApiBudget:
    daily_cap: int
    # API calls the governor granted the tenant in the last 24 hours.
    duplex_calls: int
    # The org's own count and allocation, as Salesforce last reported them (None: never yet).
    org_used: int | None
    org_max: int | None
    org_observed_at: datetime | None
    # Calls granted in each of the last 24 hours, oldest first (the last one is the current hour).
    hourly: tuple[int, ...] = ()

    @property
    def low(self) -> bool:
        """Under 10 % left of the tenant's cap or of the org's daily allocation."""
        if self.duplex_calls >= self.daily_cap * (1 - LOW_BUDGET):
            return True
        if not self.org_max:
            return False
        return self.org_max - (self.org_used or 0) < self.org_max * LOW_BUDGET


def api_budget(state: Any, daily_cap: int, now: datetime) -> ApiBudget:
    """The governor's stored budget (``governor_budgets.state``) as seen at ``now``."""
    stored = _detail(state)
    since = _microseconds(now - timedelta(hours=24))
    hourly = [0] * 24
    for start, n in (stored.get("ledger") or {}).items():
        offset = _moment(start) - since
        if offset > 0:
            # A bucket ahead of now (a clock ahead) counts in the last hour.
            hourly[offset // _HOUR if offset < _DAY else 23] += int(n)
    calls = sum(hourly)
    org = stored.get("org") or {}
    observed = org.get("observedAt")
    return ApiBudget(
        daily_cap=daily_cap,
        duplex_calls=calls,
        org_used=int(org["used"]) if "used" in org else None,
        org_max=int(org["max"]) if "max" in org else None,
        org_observed_at=datetime.fromisoformat(observed) if observed else None,
        hourly=tuple(hourly),
    )


# The ledger's keys are minute buckets: the same day of keys in every tenant's ledger, request
# after request, so each is parsed once (a day of fifty tenants' buckets is 72,000 keys).
@functools.lru_cache(maxsize=4 * 24 * 60)
def _moment(iso: str) -> int:
    return _microseconds(datetime.fromisoformat(iso))


# Whole microseconds, so that comparing and bucketing are exact, as on datetimes.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR = 3600 * 1_000_000
_DAY = 24 * _HOUR


def _microseconds(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


async def budget_states(conn: Connection, tenants: Collection[str]) -> dict[str, Any]:
    """The governor's stored budget of each tenant it has granted a call (others are absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, jsonb_build_object('ledger', state->'ledger', 'org', state->'org') AS state"
        " FROM governor_budgets WHERE tenant_id = ANY($1::text[])",
        _by_tenant(tenants),
    )
    return {r["tenant_id"]: r["state"] for r in rows}


async def active_jobs(conn: Connection, tenants: Collection[str]) -> dict[str, int]:
    """How many jobs each tenant has waiting or running (a tenant with none is absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, count(*) AS n FROM jobs WHERE tenant_id = ANY($1::text[])"
        " AND status IN ('requested', 'running') GROUP BY tenant_id",
        _by_tenant(tenants),
    )
    return {r["tenant_id"]: r["n"] for r in rows}


async def pause_counts(conn: Connection, tenants: Collection[str]) -> dict[str, int]:
    """How many pauses (a pair, or every pair, one way) each tenant has (a tenant with none is absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, count(*) AS n FROM sync_pauses WHERE tenant_id = ANY($1::text[]) GROUP BY tenant_id",
        _by_tenant(tenants),
    )
    return {r["tenant_id"]: r["n"] for r in rows}


@dataclass(frozen=True)
class ConnectionState:
    status: ConnectionStatus
    org_id: str | None


async def connection_states(conn: Connection, tenants: Collection[str]) -> dict[str, ConnectionState]:
    """Each tenant's Salesforce connection status and org; without a row, not connected (as
    :func:`services.common.connections.read_connection` has it). Every tenant asked for has an entry."""
    names = _by_tenant(tenants)
    rows = await conn.fetch(
        "SELECT tenant_id, status, org_id FROM salesforce_connections WHERE tenant_id = ANY($1::text[])", names
    )
    found = {r["tenant_id"]: ConnectionState(ConnectionStatus(r["status"]), r["org_id"]) for r in rows}
    return {name: found.get(name, ConnectionState(ConnectionStatus.NOT_CONNECTED, None)) for name in names}


def needs_attention(
    quarantines: Sequence[Quarantine],
    problems: Sequence[ProblemCount],
    drift: Sequence[RuleWarning],
    budget: ApiBudget | None,
) -> bool:
    """A tenant's status is ``attention`` when a pair is quarantined, problems occurred, a rule is
    paused by schema drift or the API budget is low; ``ok`` otherwise."""
    return bool(quarantines or problems or any(w.paused for w in drift) or (budget is not None and budget.low))


def reading_mode(
    config: TenantConfig, described: DescribedObject | ObjectState | None
) -> Literal["cdc", "polling", "unknown"]:
    """How cdc-ingest reads an object: polled when the tenant does not stream or the org does not select
    it for CDC; ``unknown`` until a schema refresh has read the selection."""
    selected = described.cdc_selected if described is not None else None
    if not config.spec.sync.cdc or selected is False:
        return "polling"
    return "unknown" if selected is None else "cdc"

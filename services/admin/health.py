"""A tenant's health at a glance: quarantined object pairs, recent problems, the last sync each way,
the API budget, how each object is read and what the org's schema breaks.

Mapping quarantines a pair whose input is mostly bad (:mod:`services.mapping.quarantine`) and says
so in the sync log: ``pair.quarantined`` when it begins, ``pair.released`` when it ends. A
quarantine also ends when the tenant's configuration version changes, so one begun under an older
version is over even before mapping wrote its release (it writes it with the pair's next change).
Problems are the sync-log rows carrying an error code (Salesforce's, or Duplex's own reason).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.common.db import Connection
from services.common.schema_store import DescribedObject
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


async def quarantine_events(conn: Connection, tenant_id: str) -> list[QuarantineEvent]:
    rows = await conn.fetch(
        "SELECT event, at, message, detail FROM sync_log WHERE tenant_id = $1 AND event = ANY($2::text[]) ORDER BY id",
        tenant_id,
        list(QUARANTINE_EVENTS),
    )
    return [QuarantineEvent(r["event"], r["at"], r["message"] or "", _detail(r["detail"])) for r in rows]


async def problem_counts(conn: Connection, tenant_id: str, since: datetime) -> list[ProblemCount]:
    """Sync-log rows with an error code since ``since``, counted per event and code, most first."""
    rows = await conn.fetch(
        "SELECT event, code, count(*) AS n, max(at) AS last_at FROM sync_log"
        " WHERE tenant_id = $1 AND at >= $2 AND code IS NOT NULL"
        " GROUP BY event, code ORDER BY n DESC, event, code",
        tenant_id,
        since,
    )
    return [ProblemCount(r["event"], r["code"], r["n"], r["last_at"]) for r in rows]


def _detail(value: Any) -> dict[str, Any]:
    # asyncpg hands jsonb over as text unless a codec is set on the connection.
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


@dataclass(frozen=True)
class LastSyncs:
    """The last record written to Salesforce, and the last update published to the app, if any recent."""

    to_crm: datetime | None
    to_app: datetime | None


async def last_syncs(conn: Connection, tenant_id: str, since: datetime) -> LastSyncs:
    to_crm = await conn.fetchval(
        "SELECT max(at) FROM sync_log WHERE tenant_id = $1 AND at >= $2 AND event = 'write.succeeded'", tenant_id, since
    )
    # A resolved change that sent the app an update (not one a pause held).
    to_app = await conn.fetchval(
        "SELECT max(at) FROM sync_log WHERE tenant_id = $1 AND at >= $2 AND event = 'change.resolved'"
        " AND detail->'writes' ? 'app' AND NOT (detail->'writes'->'app' ? 'held')",
        tenant_id,
        since,
    )
    return LastSyncs(to_crm, to_app)


@dataclass(frozen=True)
class Throughput:
    """Records synced each way in each of the last hours, oldest first (the last is the hour to now)."""

    to_crm: tuple[int, ...]
    to_app: tuple[int, ...]


async def throughput(conn: Connection, tenant_id: str, now: datetime, hours: int = 24) -> Throughput:
    """Counted from the sync log as :func:`last_syncs` reads it: records written to Salesforce, and
    resolved changes that sent the app an update (not held by a pause)."""
    since = now - timedelta(hours=hours)
    rows = await conn.fetch(
        "SELECT floor(extract(epoch FROM at - $2::timestamptz) / 3600)::int AS hour,"
        # The writer logs one write.succeeded row per batch, with how many records it wrote.
        " COALESCE(sum(COALESCE((detail->>'count')::int, 1)) FILTER (WHERE event = 'write.succeeded'), 0) AS to_crm,"
        " count(*) FILTER (WHERE event = 'change.resolved' AND detail->'writes' ? 'app'"
        " AND NOT (detail->'writes'->'app' ? 'held')) AS to_app"
        " FROM sync_log WHERE tenant_id = $1 AND at > $2 AND at <= $3"
        " AND event IN ('write.succeeded', 'change.resolved') GROUP BY 1",
        tenant_id,
        since,
        now,
    )
    to_crm, to_app = [0] * hours, [0] * hours
    for row in rows:
        hour = min(hours - 1, max(0, row["hour"]))
        to_crm[hour] += row["to_crm"]
        to_app[hour] += row["to_app"]
    return Throughput(tuple(to_crm), tuple(to_app))


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
    since = now - timedelta(hours=24)
    hourly = [0] * 24
    for start, n in (stored.get("ledger") or {}).items():
        at = datetime.fromisoformat(start)
        if at > since:
            hourly[min(23, int((at - since).total_seconds() // 3600))] += int(n)
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


async def budget_state(conn: Connection, tenant_id: str) -> Any:
    return await conn.fetchval("SELECT state FROM governor_budgets WHERE tenant_id = $1", tenant_id)


def reading_mode(config: TenantConfig, described: DescribedObject | None) -> Literal["cdc", "polling", "unknown"]:
    """How cdc-ingest reads an object: polled when the tenant does not stream or the org does not select
    it for CDC; ``unknown`` until a schema refresh has read the selection."""
    selected = described.cdc_selected if described is not None else None
    if not config.spec.sync.cdc or selected is False:
        return "polling"
    return "unknown" if selected is None else "cdc"

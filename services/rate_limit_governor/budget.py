"""A tenant's Salesforce API budget: the governor's arithmetic, pure and clock-free.

The governor stores one :class:`TenantBudget` per tenant and, for each request, loads it under a
row lock, calls :func:`acquire` with the current time, and saves the result, so several replicas
agree (Postgres serialises them). Every function here takes ``now`` explicitly.

How much a tenant may spend:
- at most ``daily_cap`` calls granted in any rolling 24 hours (a ledger of per-minute buckets);
- never more than the org has left: the org's allocation times ``org_share``, minus what
  Salesforce last reported as used (which includes every other integration's calls), minus what
  Duplex was granted since that report; when that report says the org is out and is a minute
  old, one live call a minute goes through to fetch a fresh one (else a lifted limit would never
  be seen);
- spread over the day: a token bucket refilling at ``daily_cap`` per 24 h, holding at most
  ``burst`` calls, so a backlog cannot spend the whole day's budget in a minute;
- backfills (low priority) never take the last ``live_reserve`` of the budget or of the bucket,
  so live changes always find room;
- at most ``max_long_running`` concurrent long-running calls (Bulk jobs, big queries).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

WINDOW = timedelta(hours=24)
BUCKET = timedelta(minutes=1)
WARNING_FRACTION = 0.10
# How old the org's last reported usage must be before one call may go to refresh it, when that
# report says the org is out of calls.
ORG_PROBE_AFTER = timedelta(minutes=1)


class Priority(enum.IntEnum):
    LIVE = 1
    BACKFILL = 2


@dataclass(frozen=True)
class Limits:
    """Configuration of one tenant's budget."""

    daily_cap: int
    # Share of the org's allocation Duplex may use, leaving the rest to other integrations.
    org_share: float = 0.9
    # Token-bucket capacity: how many calls may be spent at once after a quiet period.
    burst: int = 0
    # Fraction of the budget (and of the bucket) that backfills may not touch.
    live_reserve: float = 0.2
    max_long_running: int = 5
    lease_ttl: timedelta = timedelta(minutes=15)

    @property
    def effective_burst(self) -> int:
        # Default: a minute's worth of an even spread, but at least 200 calls (one full batch).
        return self.burst or max(200, math.ceil(self.daily_cap / (24 * 60)))


@dataclass(frozen=True)
class OrgUsage:
    """What Salesforce last reported (Sforce-Limit-Info, /limits) about the whole org."""

    used: int
    max: int
    observed_at: datetime


@dataclass(frozen=True)
class TenantBudget:
    """The stored state of one tenant's budget."""

    limits: Limits
    # Minute bucket start -> calls granted in that minute (only the last 24 h are kept).
    ledger: dict[datetime, int] = field(default_factory=dict)
    tokens: float = -1.0  # -1: not initialised yet (starts full)
    tokens_at: datetime | None = None
    org: OrgUsage | None = None
    # Calls granted since ``org`` was observed, not yet part of Salesforce's count.
    granted_since_report: int = 0
    # Lease id -> expiry, for long-running calls.
    leases: dict[str, datetime] = field(default_factory=dict)
    # Whether the tenant was below the warning line after the last decision. Stored, not derived
    # from the ledger: limits are read afresh each time, and a cap lowered past the line must warn.
    warned: bool = False


@dataclass(frozen=True)
class Grant:
    granted: bool
    budget: TenantBudget
    remaining: int
    reason: str
    not_before: datetime | None = None
    lease_id: str | None = None


def _bucket(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _pruned(ledger: dict[datetime, int], now: datetime) -> dict[datetime, int]:
    horizon = now - WINDOW
    return {start: calls for start, calls in ledger.items() if start + BUCKET > horizon}


def granted_in_window(budget: TenantBudget, now: datetime) -> int:
    """Calls granted in the rolling 24 hours before ``now``."""
    return sum(_pruned(budget.ledger, now).values())


def org_headroom(budget: TenantBudget) -> int | None:
    """How many more calls the org can give Duplex, or None when Salesforce has not reported yet."""
    org = budget.org
    if org is None:
        return None
    return math.floor(org.max * budget.limits.org_share) - org.used - budget.granted_since_report


def remaining(budget: TenantBudget, now: datetime) -> int:
    """Calls this tenant may still make in the current rolling window."""
    left = budget.limits.daily_cap - granted_in_window(budget, now)
    headroom = org_headroom(budget)
    if headroom is not None:
        left = min(left, headroom)
    return max(0, left)


def is_warning(budget: TenantBudget, now: datetime) -> bool:
    """True below 10 % of the daily cap remaining."""
    return remaining(budget, now) < WARNING_FRACTION * budget.limits.daily_cap


def crossed_warning(budget: TenantBudget, now: datetime) -> tuple[TenantBudget, bool]:
    """The budget with its warning state brought up to date, and whether it has just gone below
    the line (once per crossing: it warns again only after climbing back above it)."""
    warning = is_warning(budget, now)
    if warning == budget.warned:
        return budget, False
    return replace(budget, warned=warning), warning


def _refilled(budget: TenantBudget, now: datetime) -> tuple[float, datetime]:
    burst = budget.limits.effective_burst
    if budget.tokens < 0 or budget.tokens_at is None:
        return float(burst), now
    rate = budget.limits.daily_cap / WINDOW.total_seconds()
    elapsed = max(0.0, (now - budget.tokens_at).total_seconds())
    return min(float(burst), budget.tokens + elapsed * rate), now


def _window_frees_at(budget: TenantBudget, now: datetime, needed: int) -> datetime:
    """When enough grants age out of the 24-hour window to allow ``needed`` more calls."""
    ledger = _pruned(budget.ledger, now)
    excess = granted_in_window(budget, now) + needed - budget.limits.daily_cap
    for start in sorted(ledger):
        excess -= ledger[start]
        if excess <= 0:
            return start + BUCKET + WINDOW
    return now + WINDOW


def acquire(
    budget: TenantBudget,
    calls: int,
    now: datetime,
    *,
    priority: Priority = Priority.LIVE,
    long_running: bool = False,
    lease_id: str | None = None,
) -> Grant:
    """Grant ``calls`` now, or say why not and when to ask again."""
    if calls <= 0:
        msg = "calls must be positive"
        raise ValueError(msg)
    limits = budget.limits
    leases = {key: expiry for key, expiry in budget.leases.items() if expiry > now}
    budget = replace(budget, ledger=_pruned(budget.ledger, now), leases=leases)
    left = remaining(budget, now)
    tokens, tokens_at = _refilled(budget, now)

    def deny(reason: str, not_before: datetime) -> Grant:
        return Grant(False, budget, left, reason, not_before=not_before)

    reserve = limits.live_reserve if priority is Priority.BACKFILL else 0.0
    probe = False
    if left - calls < reserve * limits.daily_cap:
        headroom = org_headroom(budget)
        own_left = limits.daily_cap - granted_in_window(budget, now)
        if headroom is not None and headroom - calls < reserve * limits.daily_cap:
            # The org itself is (nearly) out, as far as the last report knows. Only a new report can
            # say otherwise (the window moved on, the limit was raised), and reports come only with
            # calls: so once the report is old, one live call may go as a probe.
            assert budget.org is not None
            probe = (
                calls == 1
                and priority is Priority.LIVE
                and now - budget.org.observed_at >= ORG_PROBE_AFTER
                and own_left >= 1
            )
            if not probe:
                probe_at = budget.org.observed_at + ORG_PROBE_AFTER
                return deny("org allocation exhausted", probe_at if probe_at > now else now + ORG_PROBE_AFTER)
        else:
            return deny("daily cap reached", _window_frees_at(budget, now, calls))
    if tokens - calls < reserve * limits.effective_burst and not probe:
        rate = limits.daily_cap / WINDOW.total_seconds()
        wait = (calls + reserve * limits.effective_burst - tokens) / rate
        return deny("spreading calls over the day", now + timedelta(seconds=math.ceil(wait)))
    if long_running and len(leases) >= limits.max_long_running:
        return deny("too many long-running calls", min(leases.values()))

    ledger = dict(budget.ledger)
    ledger[_bucket(now)] = ledger.get(_bucket(now), 0) + calls
    if long_running:
        if lease_id is None:
            msg = "long-running grants need a lease id"
            raise ValueError(msg)
        leases[lease_id] = now + limits.lease_ttl
    budget = replace(
        budget,
        ledger=ledger,
        tokens=tokens - calls,
        tokens_at=tokens_at,
        granted_since_report=budget.granted_since_report + calls,
        leases=leases,
    )
    if probe:
        # Counts as looking again: the next probe waits another interval (some calls, such as
        # OAuth's, return no usage at all, so the probe may bring no report back).
        assert budget.org is not None
        budget = replace(budget, org=replace(budget.org, observed_at=now))
    return Grant(True, budget, remaining(budget, now), "granted", lease_id=lease_id if long_running else None)


def release(budget: TenantBudget, lease_id: str) -> TenantBudget:
    """A long-running call finished."""
    return replace(budget, leases={k: v for k, v in budget.leases.items() if k != lease_id})


def report(budget: TenantBudget, usage: OrgUsage) -> TenantBudget:
    """Salesforce told us the org's usage. Older reports than the one held are ignored."""
    if budget.org is not None and usage.observed_at < budget.org.observed_at:
        return budget
    return replace(budget, org=usage, granted_since_report=0)


def predicted_exhaustion(budget: TenantBudget, now: datetime) -> datetime | None:
    """When the budget runs out at the last hour's grant rate, or None if nothing was granted."""
    hour_ago = now - timedelta(hours=1)
    recent = sum(calls for start, calls in budget.ledger.items() if start >= _bucket(hour_ago))
    if recent == 0:
        return None
    per_second = recent / timedelta(hours=1).total_seconds()
    return now + timedelta(seconds=remaining(budget, now) / per_second)

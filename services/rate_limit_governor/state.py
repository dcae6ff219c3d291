"""The stored form of a tenant's budget (JSON in ``governor_budgets.state``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.rate_limit_governor.budget import Limits, OrgUsage, TenantBudget


def dump(budget: TenantBudget) -> dict[str, Any]:
    """The dynamic part of a budget; limits come from configuration each time."""
    org = budget.org
    return {
        "ledger": {start.isoformat(): calls for start, calls in budget.ledger.items()},
        "tokens": budget.tokens,
        "tokensAt": budget.tokens_at.isoformat() if budget.tokens_at else None,
        "org": None if org is None else {"used": org.used, "max": org.max, "observedAt": org.observed_at.isoformat()},
        "grantedSinceReport": budget.granted_since_report,
        "leases": {lease: expiry.isoformat() for lease, expiry in budget.leases.items()},
        "warned": budget.warned,
    }


def load(limits: Limits, stored: dict[str, Any] | None) -> TenantBudget:
    """A budget from its stored form (or a fresh one) under the current limits."""
    if not stored:
        return TenantBudget(limits)
    org = stored.get("org")
    return TenantBudget(
        limits=limits,
        ledger={datetime.fromisoformat(k): int(v) for k, v in stored.get("ledger", {}).items()},
        tokens=float(stored.get("tokens", -1.0)),
        tokens_at=datetime.fromisoformat(stored["tokensAt"]) if stored.get("tokensAt") else None,
        org=None
        if org is None
        else OrgUsage(int(org["used"]), int(org["max"]), datetime.fromisoformat(org["observedAt"])),
        granted_since_report=int(stored.get("grantedSinceReport", 0)),
        leases={k: datetime.fromisoformat(v) for k, v in stored.get("leases", {}).items()},
        warned=bool(stored.get("warned", False)),
    )

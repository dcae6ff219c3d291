"""After each decision the governor exports what the tenant may still spend (duplex_api_budget_remaining)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from duplex.governor.v1 import governor_pb2, governor_service_pb2
from prometheus_client import CollectorRegistry

from services.common.metrics import Metrics
from services.rate_limit_governor.budget import Limits, TenantBudget
from services.rate_limit_governor.ledger import Ledger
from services.rate_limit_governor.server import Governor

pytestmark = pytest.mark.unit

T = TypeVar("T")
T0 = datetime(2026, 5, 1, tzinfo=UTC)
GAUGE = "duplex_api_budget_remaining"
# Only bad requests reach the context (abort); these tests send none.
NO_CONTEXT: Any = None


@dataclass
class Conn:
    """Takes the sync-log rows a decision writes (budget warnings)."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)

    async def execute(self, _sql: str, *args: Any) -> None:
        self.rows.append(args)


class MemoryLedger(Ledger):
    """The ledger's contract (load, decide, save) without Postgres."""

    def __init__(self, caps: dict[str, int]) -> None:
        self.budgets = {tenant: TenantBudget(Limits(daily_cap=cap, burst=100)) for tenant, cap in caps.items()}
        self.conn = Conn()

    async def update(
        self, tenant_id: str, change: Callable[[TenantBudget, Any], Awaitable[tuple[TenantBudget, T]]]
    ) -> T:
        budget, result = await change(self.budgets[tenant_id], self.conn)
        self.budgets[tenant_id] = budget
        return result


def acquire(tenant: str, calls: int, *, backfill: bool = False) -> governor_service_pb2.AcquireCallsRequest:
    priority = governor_pb2.CALL_PRIORITY_BACKFILL if backfill else governor_pb2.CALL_PRIORITY_LIVE
    return governor_service_pb2.AcquireCallsRequest(tenant_id=tenant, calls=calls, priority=priority)


def usage(tenant: str, used: int, limit: int) -> governor_service_pb2.ReportUsageRequest:
    return governor_service_pb2.ReportUsageRequest(tenant_id=tenant, used=used, max=limit)


Request = governor_service_pb2.AcquireCallsRequest | governor_service_pb2.ReportUsageRequest


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        pytest.param([acquire("acme", 10)], 990, id="a grant spends the daily cap"),
        pytest.param([acquire("acme", 10), acquire("acme", 5, backfill=True)], 985, id="backfill grants too"),
        # More than the bucket holds: denied, and the gauge still shows the (unchanged) budget.
        pytest.param([acquire("acme", 150)], 1000, id="a denial leaves the budget as it was"),
        # 0.9 x 5000 - 4000 = 500 left in the org, below the tenant's own 1000.
        pytest.param([usage("acme", 4000, 5000)], 500, id="the org's headroom caps it"),
        pytest.param([usage("acme", 4000, 5000), acquire("acme", 20)], 480, id="grants after a report"),
        pytest.param([usage("acme", 100, 100_000), acquire("acme", 30)], 970, id="the daily cap when lower"),
        pytest.param([usage("acme", 5000, 5000)], 0, id="never below zero"),
    ],
)
async def test_the_gauge_is_the_budget_after_the_last_decision(requests: list[Request], expected: int) -> None:
    metrics = Metrics(CollectorRegistry())
    ledger = MemoryLedger({"acme": 1000, "globex": 2000})
    governor = Governor(ledger, lambda: T0, metrics=metrics)

    for request in requests:
        if isinstance(request, governor_service_pb2.AcquireCallsRequest):
            await governor.AcquireCalls(request, NO_CONTEXT)
        else:
            await governor.ReportUsage(request, NO_CONTEXT)

    assert metrics.registry.get_sample_value(GAUGE, {"tenant": "acme"}) == expected
    # Per tenant: a tenant nothing was decided for has no sample.
    assert metrics.registry.get_sample_value(GAUGE, {"tenant": "globex"}) is None


async def test_each_tenant_has_its_own_gauge() -> None:
    metrics = Metrics(CollectorRegistry())
    governor = Governor(MemoryLedger({"acme": 1000, "globex": 2000}), lambda: T0, metrics=metrics)

    await governor.AcquireCalls(acquire("acme", 7), NO_CONTEXT)
    await governor.AcquireCalls(acquire("globex", 9), NO_CONTEXT)

    assert metrics.registry.get_sample_value(GAUGE, {"tenant": "acme"}) == 993
    assert metrics.registry.get_sample_value(GAUGE, {"tenant": "globex"}) == 1991


async def test_without_metrics_decisions_still_go_through() -> None:
    governor = Governor(MemoryLedger({"acme": 1000}), lambda: T0)
    assert (await governor.AcquireCalls(acquire("acme", 1), NO_CONTEXT)).granted


async def test_grants_denials_and_the_warning_are_exported_on_the_service_registry() -> None:
    # They were once on prometheus_client's default registry, which /metrics does not serve.
    metrics = Metrics(CollectorRegistry())
    governor = Governor(MemoryLedger({"acme": 1000}), lambda: T0, metrics=metrics)

    await governor.AcquireCalls(acquire("acme", 60), NO_CONTEXT)
    await governor.AcquireCalls(acquire("acme", 150), NO_CONTEXT)
    await governor.ReportUsage(usage("acme", 4900, 5000), NO_CONTEXT)

    sample = metrics.registry.get_sample_value
    assert sample("duplex_governor_calls_granted_total", {"tenant": "acme", "priority": "live"}) == 60
    denied = [
        s for m in metrics.registry.collect() for s in m.samples if s.name == "duplex_governor_requests_denied_total"
    ]
    assert [s.value for s in denied] == [1]
    assert sample("duplex_governor_budget_warning", {"tenant": "acme"}) == 1
    assert sample("duplex_governor_predicted_exhaustion_seconds", {"tenant": "acme"}) is not None


async def test_a_cap_lowered_below_the_warning_line_writes_one_warning_to_the_sync_log() -> None:
    ledger = MemoryLedger({"acme": 1000})
    governor = Governor(ledger, lambda: T0)
    await governor.AcquireCalls(acquire("acme", 40), NO_CONTEXT)
    assert ledger.conn.rows == []

    # What an operator's new cap does: the next decision loads the same state under new limits.
    ledger.budgets["acme"] = replace(ledger.budgets["acme"], limits=Limits(daily_cap=42, burst=100))
    for _ in range(3):
        await governor.AcquireCalls(acquire("acme", 1), NO_CONTEXT)

    assert [row[2] for row in ledger.conn.rows] == ["budget.warning"]

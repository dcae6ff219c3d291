"""API request allocations: a rolling 24-hour count per org, the Sforce-Limit-Info header, /limits.

Usage is counted in one-minute buckets, so "the last 24 hours" is exact to the minute and costs
1,440 integers per org and limit at most. Counters live in memory: a restart forgets usage, as a
fresh org would have none.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependency aliases live inside the router factory, out of reach of string annotations.
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import request_limit_exceeded
from services.salesforce_emulator.orgs import Edition, Org, OrgRegistry

Clock = Callable[[], float]

WINDOW_SECONDS = 24 * 60 * 60
BUCKET_SECONDS = 60

DAILY_API_REQUESTS = "DailyApiRequests"
DAILY_BULK_V2_QUERY_JOBS = "DailyBulkV2QueryJobs"
DAILY_BULK_API_BATCHES = "DailyBulkApiBatches"
DAILY_DURABLE_STREAMING_EVENTS = "DailyDurableStreamingApiEvents"

# Per-edition maxima for the /limits entries other than DailyApiRequests: the Developer Edition
# figures are the ones a real Developer org reports; the others are the documented production ones.
_DEVELOPER_LIMITS: dict[str, int] = {
    "ConcurrentAsyncGetReportInstances": 200,
    "ConcurrentSyncReportRuns": 20,
    "DailyAsyncApexExecutions": 250000,
    DAILY_BULK_API_BATCHES: 15000,
    "DailyBulkApiRequests": 15000,
    DAILY_BULK_V2_QUERY_JOBS: 10000,
    "DailyBulkV2QueryFileStorageMB": 976562,
    "DailyDeliveredPlatformEvents": 10000,
    DAILY_DURABLE_STREAMING_EVENTS: 10000,
    "DailyDurableGenericStreamingApiEvents": 10000,
    "DailyGenericStreamingApiEvents": 10000,
    "DailyStreamingApiEvents": 10000,
    "DailyWorkflowEmails": 390,
    "DataStorageMB": 5,
    "DurableStreamingApiConcurrentClients": 20,
    "FileStorageMB": 20,
    "HourlyAsyncReportRuns": 1200,
    "HourlyDashboardRefreshes": 200,
    "HourlyDashboardResults": 5000,
    "HourlyDashboardStatuses": 999999999,
    "HourlyODataCallout": 20000,
    "HourlyPublishedPlatformEvents": 50000,
    "HourlySyncReportRuns": 500,
    "HourlyTimeBasedWorkflow": 50,
    "MassEmail": 10,
    "SingleEmail": 15,
    "StreamingApiConcurrentClients": 20,
}
_PRODUCTION_OVERRIDES: dict[str, int] = {
    DAILY_DURABLE_STREAMING_EVENTS: 50000,
    "DailyDeliveredPlatformEvents": 50000,
    "DailyDurableGenericStreamingApiEvents": 50000,
    "DailyGenericStreamingApiEvents": 50000,
    "DailyStreamingApiEvents": 50000,
    "DataStorageMB": 10240,
    "DurableStreamingApiConcurrentClients": 1000,
    "FileStorageMB": 10240,
    "HourlyPublishedPlatformEvents": 250000,
    "MassEmail": 5000,
    "SingleEmail": 5000,
    "StreamingApiConcurrentClients": 1000,
}


def daily_api_allocation(edition: Edition, licenses: int) -> int:
    """The documented rolling-24 h allocation: a base plus an amount per Salesforce licence."""
    if edition == "developer":
        return 15000
    per_license = 5000 if edition in ("unlimited", "performance") else 1000
    return 100000 + per_license * licenses


def edition_limits(edition: Edition) -> dict[str, int]:
    return dict(_DEVELOPER_LIMITS) if edition == "developer" else {**_DEVELOPER_LIMITS, **_PRODUCTION_OVERRIDES}


class RollingCounter:
    """Events in the last 24 hours, bucketed by minute."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()  # [minute, count], oldest first
        self._total = 0

    def add(self, minute: int, n: int) -> None:
        self._expire(minute)
        if self._buckets and self._buckets[-1][0] == minute:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([minute, n])
        self._total += n

    def total(self, minute: int) -> int:
        self._expire(minute)
        return self._total

    def _expire(self, minute: int) -> None:
        oldest_kept = minute - WINDOW_SECONDS // BUCKET_SECONDS + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._total -= self._buckets.popleft()[1]


class UsageMeter:
    """Every org's usage of every counted limit, against the org's allocation (or a lowered one)."""

    def __init__(self, orgs: OrgRegistry, clock: Clock = time.time) -> None:
        self._orgs = orgs
        self._clock = clock
        self._counters: dict[tuple[str, str], RollingCounter] = {}
        # DailyApiRequests per (org, Sforce-Call-Options client; "" when none was sent): real orgs
        # do not report this, tests need it to tell Duplex's calls from everyone else's.
        self._by_client: dict[tuple[str, str], RollingCounter] = {}
        self._lock = threading.Lock()

    def _minute(self) -> int:
        return int(self._clock() // BUCKET_SECONDS)

    def record(self, org_id: str, n: int = 1, limit: str = DAILY_API_REQUESTS) -> None:
        """Count ``n`` uses; the admin API uses this for calls "made by other integrations"."""
        with self._lock:
            self._counters.setdefault((org_id, limit), RollingCounter()).add(self._minute(), n)

    def used(self, org_id: str, limit: str = DAILY_API_REQUESTS) -> int:
        with self._lock:
            counter = self._counters.get((org_id, limit))
            return counter.total(self._minute()) if counter else 0

    def allocation(self, org: Org) -> int:
        """The org's daily API request maximum: the lowered fault value when one is set."""
        if org.faults.api_limit is not None:
            return org.faults.api_limit
        return daily_api_allocation(org.state.edition, org.state.licenses)

    def admit(self, org: Org, client: str | None = None) -> tuple[int, int]:
        """Count one API call made by ``client``, or raise REQUEST_LIMIT_EXCEEDED once the allocation is used up.

        Returns (used, max) after counting, for the Sforce-Limit-Info header. A refused call is not
        counted, so usage stays at the allocation while it is exhausted.
        """
        maximum = self.allocation(org)
        with self._lock:
            counter = self._counters.setdefault((org.org_id, DAILY_API_REQUESTS), RollingCounter())
            minute = self._minute()
            used = counter.total(minute)
            if used >= maximum:
                raise request_limit_exceeded()
            counter.add(minute, 1)
            self._by_client.setdefault((org.org_id, client or ""), RollingCounter()).add(minute, 1)
            return used + 1, maximum

    def used_by_client(self, org_id: str) -> dict[str, int]:
        """API requests admitted in the last 24 hours per Sforce-Call-Options client ("" for none)."""
        minute = self._minute()
        with self._lock:
            return {client: c.total(minute) for (org, client), c in self._by_client.items() if org == org_id}

    def header(self, org: Org) -> str:
        return f"api-usage={self.used(org.org_id)}/{self.allocation(org)}"

    def reset(self, org_id: str) -> None:
        with self._lock:
            for counters in (self._counters, self._by_client):
                for key in [k for k in counters if k[0] == org_id]:
                    del counters[key]

    def limits(self, org: Org) -> dict[str, dict[str, int]]:
        """The /limits document: every entry with Max and Remaining."""
        maxima = edition_limits(org.state.edition)
        maxima[DAILY_API_REQUESTS] = self.allocation(org)
        return {
            name: {"Max": maximum, "Remaining": max(0, maximum - self.used(org.org_id, name))}
            for name, maximum in sorted(maxima.items())
        }


def build_limits_router(meter: UsageMeter, orgs: OrgRegistry, call_context: Callable[..., CallContext]) -> APIRouter:
    """``GET /services/data/vXX.X/limits/``."""
    router = APIRouter()

    @router.get("/services/data/v{version}/limits")
    @router.get("/services/data/v{version}/limits/")
    async def limits(ctx: Annotated[CallContext, Depends(call_context)]) -> dict[str, Any]:
        return dict(meter.limits(orgs.get(ctx.org_id)))

    return router

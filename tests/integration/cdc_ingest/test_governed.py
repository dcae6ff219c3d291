"""cdc-ingest under the real rate-limit-governor: every Salesforce call is granted and counted by it,
and a backfill stops at the tenant's daily cap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from duplex.governor.v1 import governor_pb2
from prometheus_client import CollectorRegistry

from services.common.governor_client import GovernorBudget
from services.common.settings import PostgresSettings
from services.common.telemetry import Telemetry
from services.rate_limit_governor.app import run as run_governor
from services.rate_limit_governor.settings import GovernorSettings
from tests.fixtures.telemetry import local_telemetry
from tests.integration.cdc_ingest.harness import CALL_OPTIONS_CLIENT, Harness, Org, Tenant, in_thread, wait_backfilled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@contextlib.asynccontextmanager
async def governor(dsn: str, telemetry: Telemetry | None = None) -> AsyncIterator[str]:
    config = GovernorSettings(port=0, postgres=PostgresSettings(dsn=dsn))
    async with run_governor(config, telemetry) as running:
        yield f"127.0.0.1:{running.port}"


def calls_by_ingest(org: Org) -> int:
    """Calls the emulator counted for cdc-ingest's call-options client (not the test's own)."""
    usage: dict[str, Any] = org.admin("GET", "/usage")
    return int(usage["by_client"].get(CALL_OPTIONS_CLIENT, 0))


async def budget_of(target: str, tenant: Tenant) -> governor_pb2.Budget:
    budget, channel = GovernorBudget.connect(target)
    try:
        return await budget.budget(tenant.id)
    finally:
        await channel.close(None)


def api_calls(registry: CollectorRegistry, tenant: Tenant) -> dict[tuple[str, str], float]:
    """duplex_api_calls_total of ``tenant`` by (api, priority)."""
    return {
        (s.labels["api"], s.labels["priority"]): s.value
        for metric in registry.collect()
        if metric.name == "duplex_api_calls"
        for s in metric.samples
        if s.name == "duplex_api_calls_total" and s.labels["tenant"] == tenant.id
    }


async def settled_calls(org: Org, *, quiet: float = 3.0, within: float = 60.0) -> int:
    """cdc-ingest's call count once it has not moved for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    last, since = calls_by_ingest(org), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"cdc-ingest kept calling: {last} calls")
        await asyncio.sleep(0.25)
        now = calls_by_ingest(org)
        if now != last:
            last, since = now, time.monotonic()
    return last


async def test_every_call_is_granted_and_counted_by_the_governor(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    sf = org.salesforce()
    await in_thread(sf.bulk2.Account.insert, records=[{"Name": f"Existing {i:03d}"} for i in range(30)], wait=0.2)

    governor_telemetry = local_telemetry("rate-limit-governor")
    telemetry = local_telemetry("cdc-ingest")
    async with governor(cdc.dsn, governor_telemetry) as target, cdc.reader() as reader:
        config = cdc.settings(governor_target=target, poll_page_size=10)
        async with cdc.running(tenant, config, governed=True, telemetry=telemetry):
            await wait_backfilled(cdc.dsn, tenant.id, 1)
            await reader.until(lambda changes: len({c.record_id for c in changes}) >= 30)
            calls = await settled_calls(org)
            budget = await budget_of(target, tenant)
            counted = api_calls(telemetry.registry, tenant)
            remaining = governor_telemetry.registry.get_sample_value(
                "duplex_api_budget_remaining", {"tenant": tenant.id}
            )

    # At least count, describe and 4 pages of 10 (the last one empty).
    assert calls >= 6, calls
    # Exactly what Salesforce counted (userinfo, an OAuth endpoint, is asked of neither).
    assert budget.granted_24h == calls, (budget.granted_24h, calls)
    # Salesforce's Sforce-Limit-Info was passed on.
    assert budget.org_max > 0
    # cdc-ingest counted the same calls (duplex_api_calls_total), the backfill's at backfill priority.
    assert sum(counted.values()) == calls, counted
    assert counted.get(("rest", "backfill"), 0) > 0, counted
    # The governor exported what the tenant has left after its last decision.
    assert remaining == budget.remaining, (remaining, budget.remaining)


async def test_a_backfill_stops_at_the_tenants_daily_cap(cdc: Harness) -> None:
    records, page, cap = 200, 10, 10
    tenant = await cdc.tenant(["Account"], cap=cap)
    org = tenant.org
    sf = org.salesforce()
    await in_thread(sf.bulk2.Account.insert, records=[{"Name": f"Existing {i:03d}"} for i in range(records)], wait=0.2)

    async with governor(cdc.dsn) as target, cdc.reader() as reader:
        config = cdc.settings(
            governor_target=target, governor_max_wait_seconds=1, bulk_threshold=1_000_000, poll_page_size=page
        )
        async with cdc.running(tenant, config, governed=True):
            await reader.until(lambda changes: len(changes) >= page)
            # The worker fails on the refusal and the supervisor restarts it every lease round
            # (0.5 s here): it keeps asking, and is refused before any call is made.
            calls = await settled_calls(org)
            budget = await budget_of(target, tenant)

    # A paged backfill of 200 records needs 22 calls; the governor granted the cap and no more.
    assert 0 < calls <= cap, calls
    assert budget.granted_24h == calls
    assert budget.remaining == cap - calls
    published = {c.record_id for c in reader.changes}
    assert 0 < len(published) < records
    connection = await asyncpg.connect(cdc.dsn)
    try:
        status = await connection.fetchval("SELECT status FROM backfills WHERE tenant_id = $1", tenant.id)
    finally:
        await connection.close()
    assert status == "running"

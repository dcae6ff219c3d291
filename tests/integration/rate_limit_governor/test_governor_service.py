"""The governor over gRPC with its ledger in a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import grpc
import pytest
from duplex.governor.v1 import governor_pb2, governor_service_pb2, governor_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.settings import PostgresSettings
from services.common.telemetry import Telemetry
from services.common.tenant_config import parse_tenant_config
from services.rate_limit_governor.app import run
from services.rate_limit_governor.settings import GovernorSettings
from tests.fixtures.telemetry import local_telemetry

pytestmark = pytest.mark.integration

# The async stub type exists only in the generated .pyi.
Stub: TypeAlias = "governor_service_pb2_grpc.RateLimitGovernorServiceAsyncStub"


def tenant(name: str, cap: int) -> Any:
    return parse_tenant_config(
        {
            "apiVersion": "duplex.dev/v1",
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {
                "salesforce": {
                    "instanceUrl": f"https://{name}.my.salesforce.com",
                    "auth": {
                        "mode": "client_credentials",
                        "clientId": "id",
                        "clientSecret": {"secretRef": {"env": "X"}},
                    },
                    "dailyApiCap": cap,
                }
            },
        }
    )


@pytest.fixture
async def database(fresh_database: str) -> str:
    await migrate(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        await ConfigStore(conn).apply([tenant("tiny", 50), tenant("large", 100_000), tenant("shared", 100)], "test")
    finally:
        await conn.close()
    return fresh_database


def settings(dsn: str, **overrides: Any) -> GovernorSettings:
    return GovernorSettings(port=0, postgres=PostgresSettings(dsn=dsn), **overrides)


GovernorFactory = Callable[..., AbstractAsyncContextManager[Stub]]


@pytest.fixture
def governor(database: str) -> GovernorFactory:
    """Start a governor replica on a free port; yields a client stub."""

    def start(telemetry: Telemetry | None = None, **overrides: Any) -> AbstractAsyncContextManager[Stub]:
        async def serve() -> AsyncIterator[Stub]:
            async with (
                run(settings(database, **overrides), telemetry) as governor,
                grpc.aio.insecure_channel(f"127.0.0.1:{governor.port}") as channel,
            ):
                yield governor_service_pb2_grpc.RateLimitGovernorServiceStub(channel)

        return asynccontextmanager(serve)()

    return start


def budget_remaining(telemetry: Telemetry, tenant_id: str) -> float | None:
    return telemetry.registry.get_sample_value("duplex_api_budget_remaining", {"tenant": tenant_id})


async def acquire(stub: Stub, tenant_id: str, calls: int = 1, **kw: Any) -> governor_service_pb2.AcquireCallsResponse:
    return await stub.AcquireCalls(governor_service_pb2.AcquireCallsRequest(tenant_id=tenant_id, calls=calls, **kw))


async def test_a_tenant_never_exceeds_its_cap_and_is_warned_once(governor: GovernorFactory, database: str) -> None:
    async with governor() as stub:
        results = await asyncio.gather(*(acquire(stub, "tiny") for _ in range(120)))

    granted = sum(1 for r in results if r.granted)
    assert granted == 50
    denied = [r for r in results if not r.granted]
    assert {r.reason for r in denied} == {"daily cap reached"}
    assert all(r.not_before.seconds > 0 for r in denied)
    conn = await asyncpg.connect(database)
    try:
        warnings = await conn.fetch(
            "SELECT code, message FROM sync_log WHERE tenant_id = 'tiny' AND event = 'budget.warning'"
        )
    finally:
        await conn.close()
    assert [w["code"] for w in warnings] == ["BUDGET_LOW"]


async def test_one_tenant_out_of_budget_does_not_slow_another(governor: GovernorFactory) -> None:
    async with governor() as stub:
        tiny, large = await asyncio.gather(
            asyncio.gather(*(acquire(stub, "tiny") for _ in range(200))),
            asyncio.gather(*(acquire(stub, "large", 5) for _ in range(40))),
        )

    assert sum(r.granted for r in tiny) == 50
    assert all(r.granted for r in large)


async def test_replicas_share_one_budget(governor: GovernorFactory) -> None:
    async with governor() as one, governor() as two:
        results = await asyncio.gather(*(acquire(stub, "shared") for stub in [one, two] * 100))

    assert sum(1 for r in results if r.granted) == 100


async def test_the_ledger_survives_a_restart(governor: GovernorFactory) -> None:
    first, second = local_telemetry(), local_telemetry()
    async with governor(first) as stub:
        for _ in range(3):
            assert (await acquire(stub, "shared", 10)).granted
    async with governor(second) as stub:
        budget = (await stub.GetBudget(governor_service_pb2.GetBudgetRequest(tenant_id="shared"))).budget
        granted = await acquire(stub, "shared", 5)

    assert (budget.granted_24h, budget.remaining, budget.daily_cap) == (30, 70, 100)
    # Each replica exports the budget after its own last decision, from the shared ledger.
    assert budget_remaining(first, "shared") == 70
    assert (granted.remaining, budget_remaining(second, "shared")) == (65, 65)


async def test_calls_made_by_other_integrations_reduce_what_is_granted(governor: GovernorFactory) -> None:
    metrics = local_telemetry()
    async with governor(metrics, org_share=0.9) as stub:
        report = await stub.ReportUsage(
            governor_service_pb2.ReportUsageRequest(tenant_id="large", used=8_990, max=10_000)
        )
        # The org's headroom (0.9 x 10,000 - 8,990), not the tenant's 100,000 cap.
        after_report = budget_remaining(metrics, "large")
        first = await acquire(stub, "large", 10)
        after_grant = budget_remaining(metrics, "large")
        second = await acquire(stub, "large", 1)

    assert (after_report, after_grant, budget_remaining(metrics, "large")) == (10, 0, 0)
    assert report.budget.remaining == 10
    assert report.budget.warning
    assert first.granted
    assert (second.granted, second.reason) == (False, "org allocation exhausted")


async def test_backfills_yield_to_live_traffic(governor: GovernorFactory) -> None:
    async with governor(live_reserve=0.5) as stub:
        assert (await acquire(stub, "shared", 45)).granted
        backfill = await acquire(stub, "shared", 10, priority=governor_pb2.CALL_PRIORITY_BACKFILL)
        live = await acquire(stub, "shared", 10, priority=governor_pb2.CALL_PRIORITY_LIVE)

    assert not backfill.granted
    assert live.granted


async def test_long_running_calls_hold_leases(governor: GovernorFactory) -> None:
    async with governor(max_long_running=1) as stub:
        first = await acquire(stub, "large", long_running=True)
        blocked = await acquire(stub, "large", long_running=True)
        await stub.ReleaseLease(
            governor_service_pb2.ReleaseLeaseRequest(lease_id=first.lease_id), metadata=(("tenant-id", "large"),)
        )
        after = await acquire(stub, "large", long_running=True)

    assert first.granted
    assert first.lease_id
    assert (blocked.granted, blocked.reason) == (False, "too many long-running calls")
    assert after.granted


async def test_bad_requests_get_clear_statuses(governor: GovernorFactory) -> None:
    async with governor() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await acquire(stub, "nobody")
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await acquire(stub, "tiny", 0)

    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nobody" in (unknown.value.details() or "")
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_health_service_reports_serving(database: str) -> None:
    async with (
        run(settings(database)) as governor,
        grpc.aio.insecure_channel(f"127.0.0.1:{governor.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        named = await health.Check(health_pb2.HealthCheckRequest(service="duplex.governor.v1.RateLimitGovernorService"))

    assert overall.status == named.status == health_pb2.HealthCheckResponse.SERVING

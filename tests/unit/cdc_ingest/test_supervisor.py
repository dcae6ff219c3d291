"""The supervisor's restart rules, against an in-memory lease store."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import Store
from services.cdc_ingest.supervisor import Supervisor
from services.common.governor_client import BudgetUnavailable
from services.common.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Leases:
    """One replica that can always take and keep every lease."""

    def __init__(self) -> None:
        self.leases: set[str] = set()

    async def heartbeat(self, ttl_seconds: float) -> int:
        return 1

    async def held(self) -> list[str]:
        return sorted(self.leases)

    async def renew(self, tenant_ids: list[str], ttl_seconds: float) -> list[str]:
        return [t for t in tenant_ids if t in self.leases]

    async def try_acquire(self, tenant_id: str, ttl_seconds: float) -> bool:
        self.leases.add(tenant_id)
        return True

    async def release(self, tenant_id: str) -> None:
        self.leases.discard(tenant_id)


def refusal() -> BudgetUnavailable:
    return BudgetUnavailable("acme", T0 + timedelta(seconds=60), "org allocation exhausted")


@pytest.mark.parametrize(
    ("failure", "restarted_at_once", "level"),
    [
        (refusal(), False, logging.WARNING),
        (ExceptionGroup("worker", [refusal(), refusal()]), False, logging.WARNING),
        (ExceptionGroup("worker", [refusal(), RuntimeError("boom")]), True, logging.ERROR),
        (RuntimeError("boom"), True, logging.ERROR),
    ],
)
async def test_a_worker_out_of_budget_waits_for_it_and_any_other_failure_restarts_at_once(
    failure: BaseException, restarted_at_once: bool, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    now = T0
    runs: list[str] = []

    async def run_tenant(tenant_id: str) -> None:
        runs.append(tenant_id)
        if len(runs) == 1:
            raise failure
        await asyncio.Event().wait()

    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
        tenants=("acme",),
    )
    supervisor = Supervisor(settings, cast(Store, Leases()), run_tenant, clock=lambda: now)
    try:
        await supervisor.rebalance()
        await asyncio.sleep(0)  # the first worker runs and fails
        with caplog.at_level(logging.WARNING):
            await supervisor.rebalance()
            await asyncio.sleep(0)
        assert [r.levelno for r in caplog.records] == [level]
        assert (caplog.records[0].exc_info is not None) is (level == logging.ERROR)
        assert len(runs) == (2 if restarted_at_once else 1)

        now = T0 + timedelta(seconds=61)
        await supervisor.rebalance()
        await asyncio.sleep(0)
        assert len(runs) == 2
        assert supervisor.out_of_budget == {}
    finally:
        for task in supervisor.workers.values():
            task.cancel()
        await asyncio.gather(*supervisor.workers.values(), return_exceptions=True)

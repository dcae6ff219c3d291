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
from services.common.connections import ConnectionUnavailableError
from services.common.governor_client import BudgetUnavailable
from services.common.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Leases:
    """One replica that can always take and keep every lease."""

    def __init__(self) -> None:
        self.leases: set[str] = set()
        self.versions: dict[str, int] = {}

    async def heartbeat(self, ttl_seconds: float) -> int:
        return 1

    async def config_versions(self, tenant_ids: list[str]) -> dict[str, int]:
        return {t: self.versions.get(t, 1) for t in tenant_ids}

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


class LeaseTable:
    """Leases and replica heartbeats as ``tenant_leases`` / ``cdc_replicas`` keep them, on a clock
    the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.leases: dict[str, tuple[str, float]] = {}
        self.replicas: dict[str, float] = {}

    def view(self, holder: str) -> ReplicaLeases:
        return ReplicaLeases(self, holder)

    def holders(self) -> dict[str, str]:
        return {t: holder for t, (holder, expires) in sorted(self.leases.items()) if expires > self.now}


class ReplicaLeases:
    """One replica's side of the table (what :class:`Store` does in SQL)."""

    def __init__(self, table: LeaseTable, holder: str) -> None:
        self.table = table
        self.holder = holder

    async def config_versions(self, tenant_ids: list[str]) -> dict[str, int]:
        return dict.fromkeys(tenant_ids, 1)

    async def heartbeat(self, ttl_seconds: float) -> int:
        self.table.replicas[self.holder] = self.table.now + ttl_seconds
        return sum(expires > self.table.now for expires in self.table.replicas.values())

    async def held(self) -> list[str]:
        return [t for t, holder in self.table.holders().items() if holder == self.holder]

    async def renew(self, tenant_ids: list[str], ttl_seconds: float) -> list[str]:
        renewed = [t for t in tenant_ids if self.table.holders().get(t) == self.holder]
        for tenant_id in renewed:
            self.table.leases[tenant_id] = (self.holder, self.table.now + ttl_seconds)
        return renewed

    async def try_acquire(self, tenant_id: str, ttl_seconds: float) -> bool:
        if self.table.holders().get(tenant_id, self.holder) != self.holder:
            return False
        self.table.leases[tenant_id] = (self.holder, self.table.now + ttl_seconds)
        return True

    async def release(self, tenant_id: str) -> None:
        if self.table.leases.get(tenant_id, ("", 0.0))[0] == self.holder:
            del self.table.leases[tenant_id]


async def test_replicas_share_out_tenants_and_take_over_a_silent_one_after_the_ttl() -> None:
    tenants = ("t1", "t2", "t3", "t4")
    table = LeaseTable()
    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
        tenants=tenants,
        lease_ttl_seconds=3.0,
        lease_renew_seconds=0.5,
    )

    async def serve(_tenant_id: str) -> None:
        await asyncio.Event().wait()

    a, b = (Supervisor(settings, cast(Store, table.view(name)), serve) for name in ("a", "b"))

    def serving(supervisor: Supervisor) -> set[str]:
        return {t for t, task in supervisor.workers.items() if not task.done()}

    async def round_of(*supervisors: Supervisor) -> None:
        for supervisor in supervisors:
            await supervisor.rebalance()
        await asyncio.sleep(0)  # cancelled workers finish
        # A replica that keeps its rounds serves only what it holds. (A silent one may serve on
        # for a moment; the fenced writes stop it from moving anything, see Store.)
        for supervisor in supervisors:
            holder = cast(ReplicaLeases, supervisor.store).holder
            assert serving(supervisor) <= {t for t, h in table.holders().items() if h == holder}

    try:
        await round_of(a)
        assert table.holders() == dict.fromkeys(tenants, "a")

        await round_of(b)  # B joins: every lease is live, B waits for A to hand some back
        assert serving(b) == set()
        await round_of(a, b)
        assert table.holders() == {"t1": "a", "t2": "a", "t3": "b", "t4": "b"}
        for _ in range(3):
            table.now += 0.5
            await round_of(a, b)
        assert (serving(a), serving(b)) == ({"t1", "t2"}, {"t3", "t4"})

        # A goes silent (paused, partitioned): its leases stand until they expire.
        table.now += 2.9
        await round_of(b)
        assert serving(b) == {"t3", "t4"}
        table.now += 0.2
        await round_of(b)
        assert table.holders() == dict.fromkeys(tenants, "b")
        assert serving(b) == set(tenants)

        # A comes back: its leases are gone, so it stops serving before it takes a share again.
        await round_of(a)
        assert serving(a) == set()
        assert table.holders() == dict.fromkeys(tenants, "b")
        await round_of(b, a)
        assert table.holders() == {"t1": "b", "t2": "b", "t3": "a", "t4": "a"}
        assert (serving(a), serving(b)) == ({"t3", "t4"}, {"t1", "t2"})
    finally:
        await a.stop_all()
        await b.stop_all()


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionUnavailableError("acme", "needs_reconnect", "Salesforce refused its refresh token"),
        ExceptionGroup("worker", [ConnectionUnavailableError("acme", "needs_reconnect", "refused")]),
    ],
)
async def test_a_tenant_without_a_usable_connection_is_retried_every_round_and_reported_once(
    failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []

    async def run_tenant(tenant_id: str) -> None:
        runs.append(tenant_id)
        if len(runs) <= 3:
            raise failure
        await asyncio.Event().wait()  # connected meanwhile: it runs

    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
        tenants=("acme",),
    )
    supervisor = Supervisor(settings, cast(Store, Leases()), run_tenant, clock=lambda: T0)
    try:
        await supervisor.rebalance()
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                await supervisor.rebalance()
                await asyncio.sleep(0)
        assert len(runs) == 4
        assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)]
        assert caplog.records[0].reason == "needs_reconnect"  # type: ignore[attr-defined]
        assert supervisor.unconnected == {"acme": "needs_reconnect"}
        assert supervisor.out_of_budget == {}

        await supervisor.rebalance()
        assert supervisor.unconnected == {}
        assert len(runs) == 4
    finally:
        for task in supervisor.workers.values():
            task.cancel()
        await asyncio.gather(*supervisor.workers.values(), return_exceptions=True)


async def test_a_new_configuration_version_restarts_the_tenant_worker() -> None:
    started: list[str] = []

    async def run_tenant(tenant_id: str) -> None:
        started.append(tenant_id)
        await asyncio.Event().wait()

    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
        tenants=("acme", "globex"),
    )
    leases = Leases()
    supervisor = Supervisor(settings, cast(Store, leases), run_tenant, clock=lambda: T0)
    try:
        await supervisor.rebalance()
        await asyncio.sleep(0)
        first = supervisor.workers["acme"]
        await supervisor.rebalance()
        assert supervisor.workers["acme"] is first

        leases.versions["acme"] = 2
        await supervisor.rebalance()
        await asyncio.sleep(0)
        assert first.cancelled()
        assert supervisor.workers["acme"] is not first
        assert sorted(started) == ["acme", "acme", "globex"]
    finally:
        for task in supervisor.workers.values():
            task.cancel()
        await asyncio.gather(*supervisor.workers.values(), return_exceptions=True)


async def test_a_new_version_does_not_restart_a_tenant_waiting_for_budget() -> None:
    runs: list[str] = []

    async def run_tenant(tenant_id: str) -> None:
        runs.append(tenant_id)
        raise refusal()

    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
        tenants=("acme",),
    )
    leases = Leases()
    supervisor = Supervisor(settings, cast(Store, leases), run_tenant, clock=lambda: T0)
    await supervisor.rebalance()
    await asyncio.sleep(0)
    await supervisor.rebalance()
    assert "acme" in supervisor.out_of_budget
    leases.versions["acme"] = 2
    await supervisor.rebalance()
    await asyncio.sleep(0)
    assert runs == ["acme"]

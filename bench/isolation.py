"""Writer isolation: one tenant without API budget, 100,000 of its writes queued, beside a busy one.

A private emulator, Kafka broker and PostgreSQL; the writer runs in this process with a budget that
grants tenant "stuck" nothing. Tenant "busy" (another org) sends a burst of one-record upserts
alone; then stuck's 100,000 writes are published and parked (every offset committed, no call
made); then busy sends the same burst again. The figure is busy's records/s beside stuck over
its records/s alone, both measured in this run. Last, stuck's budget returns and its parked
writes drain: records/s and the park's memory cost (the process's peak RSS) are reported.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from duplex.writer.v1 import write_settled_pb2

from bench.report import Figure, Result
from bench.stack import BenchStack, bench_stack
from bench.writer import _command, _tenant
from devstack.emulator import EmulatorProcess, start_emulator
from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.governor_client import BudgetUnavailable
from services.common.salesforce import UnlimitedBudget, env_secrets
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.tenant_config.policy import PolicySettings
from services.common.topics import Topic
from services.writer.app import run as run_writer
from services.writer.settings import WriterSettings

QUEUED = 100_000
BURST = 5_000


class _Budget(UnlimitedBudget):
    def __init__(self, closed: set[str]) -> None:
        super().__init__()
        self.closed = closed

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        if tenant_id in self.closed:
            raise BudgetUnavailable(tenant_id, datetime.now(UTC) + timedelta(seconds=1), "daily cap reached")
        await super().acquire(tenant_id, calls, backfill=backfill)


async def _committed(servers: BenchStack, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(0, o.offset) for o in offsets.values())


async def _run() -> Result:
    async with bench_stack("bench-isolation") as servers:
        await migrate(servers.dsn)
        emulator = start_emulator(servers.root / "emulator")
        try:
            figures = await _measure(servers, emulator)
        finally:
            emulator.stop()
    return Result(
        "isolation",
        {"queued": QUEUED, "burst": BURST, "commands": "one-record upserts", "stuck's budget": "none, then unlimited"},
        figures,
    )


async def _measure(servers: BenchStack, emulator: EmulatorProcess) -> list[Figure]:
    busy = _tenant("busy", emulator, "rest")
    stuck = _tenant("stuck", emulator, "rest")
    # Two orgs' worth of tenants in one emulator org: the budget, not the org, keeps stuck out.
    conn = await asyncpg.connect(servers.dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(busy), parse_tenant_config(stuck)], "bench")
    finally:
        await conn.close()
    group = f"writer-isolation-{uuid.uuid4().hex[:6]}"
    settings = WriterSettings(
        kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=servers.names.prefix),
        postgres=PostgresSettings(dsn=servers.dsn),
        salesforce_ca_file=emulator.ca_cert,
        service_name=group,
        park_after_seconds=5.0,
        policy=PolicySettings(development=True),
    )
    secrets = env_secrets({"DUPLEX_SECRET_BENCH_SF": emulator.info["client_secret"]})
    budget = _Budget({"stuck"})
    outcomes = AIOKafkaConsumer(
        servers.names(Topic.WRITE_OUTCOMES), bootstrap_servers=servers.bootstrap_servers, auto_offset_reset="latest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers.bootstrap_servers, acks="all", linger_ms=5)
    await outcomes.start()
    await producer.start()
    topic = servers.names(Topic.CRM_WRITES)
    settled = {"busy": 0, "stuck": 0}

    async def publish(tenant: str, count: int) -> None:
        sent = [
            await producer.send(topic, _command(tenant, link).SerializeToString(), key=f"{tenant}/{link}".encode())
            for link in (f"{tenant}-{uuid.uuid4().hex}" for _ in range(count))
        ]
        await asyncio.gather(*sent)

    async def until(tenant: str, count: int) -> None:
        async with asyncio.timeout(1800):
            while settled[tenant] < count:
                for records in (await outcomes.getmany(timeout_ms=200)).values():
                    for record in records:
                        outcome = write_settled_pb2.WriteSettled.FromString(record.value or b"")
                        settled[outcome.tenant_id] = settled.get(outcome.tenant_id, 0) + 1

    async def burst() -> float:
        target = settled["busy"] + BURST
        started = time.perf_counter()
        await publish("busy", BURST)
        await until("busy", target)
        return BURST / (time.perf_counter() - started)

    try:
        async with run_writer(settings, secrets=secrets, budget=budget):
            alone = await burst()
            started = time.perf_counter()
            await publish("stuck", QUEUED)
            async with asyncio.timeout(1800):
                # Polls the broker: no event in this process says the group committed.
                while await _committed(servers, servers.names.prefix + group) < BURST + QUEUED:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
            parked = QUEUED / (time.perf_counter() - started)
            beside = await burst()
            budget.closed.clear()
            started = time.perf_counter()
            await until("stuck", QUEUED)
            drained = QUEUED / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await outcomes.stop()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [
        Figure("busy alone: written (records/s)", alone, "records/s"),
        Figure(f"busy beside {QUEUED:,} parked: written (records/s)", beside, "records/s"),
        Figure("busy beside / alone", beside / alone, "ratio", target=0.9),
        Figure("stuck without budget: consumed and parked (commands/s)", parked, "commands/s"),
        Figure("stuck once its budget returns: drained (records/s)", drained, "records/s"),
        Figure("bench process peak RSS", peak_mib, "MiB"),
    ]


def run() -> Result:
    return asyncio.run(_run())

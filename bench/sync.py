"""mapping + conflict-resolver: app changes in, Salesforce write commands out.

Both services run as their own processes against a private Kafka broker and PostgreSQL. App-side
creates of distinct records are published to app-changes; each becomes one ChangeMapped on
mapped-changes and one WriteRecords on crm-writes. Two phases:

- burst: as fast as the services take them; throughput = events over the time from the first
  publish to the last WriteRecords;
- steady: a fixed rate; added latency per event = the WriteRecords' Kafka timestamp minus the
  change's origin commit time (stamped at publish), through both services and three topics.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from duplex.change.v1 import record_changed_pb2 as rc
from duplex.writer.v1 import write_records_pb2

from bench.report import Figure, Result, rss_mib
from bench.stack import BenchStack, bench_stack, percentile
from devstack.emulator import ROOT
from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic

TENANT = "bench"
BURST = 10_000
STEADY_RATE = 1_000
STEADY_SECONDS = 5

CONFIG: dict[str, Any] = {
    "apiVersion": "duplex.dev/v1",
    "kind": "Tenant",
    "metadata": {"name": TENANT},
    "spec": {
        "salesforce": {
            "instanceUrl": "https://bench.my.salesforce.com",
            "auth": {"mode": "oauth_pkce", "clientId": "bench"},
            "dailyApiCap": 100_000,
            "callOptionsClient": "duplex-bench",
        },
        "objects": [
            {
                "name": "partners",
                "app": {"object": "partners"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "fields": [
                    {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": 255}},
                    {"app": "phone", "salesforce": "Phone", "conflictPolicy": "app_unless_blank"},
                ],
            }
        ],
    },
}


def _change(record_id: str) -> rc.RecordChanged:
    message = rc.RecordChanged(
        event_id=uuid.uuid4().hex,
        tenant_id=TENANT,
        origin_side=rc.SIDE_APP,
        object_type="partners",
        record_id=record_id,
        kind=rc.CHANGE_KIND_CREATE,
        origin_client="bench-app",
    )
    message.fields["name"].string_value = f"Partner {record_id}"
    message.fields["phone"].string_value = "555-0100"
    message.origin_commit_time.FromDatetime(datetime.now(UTC))
    return message


@asynccontextmanager
async def _services(servers: BenchStack) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": servers.names.prefix,
        "POSTGRES_DSN": servers.dsn,
        "TELEMETRY_LOG_LEVEL": "WARNING",
    }
    log = await asyncio.to_thread((servers.root / "services.log").open, "ab")
    # BENCH_PROFILE_DIR=<dir> runs each service under cProfile and leaves <dir>/<module>.prof.
    profile_dir = os.environ.get("BENCH_PROFILE_DIR")
    processes = []
    for module in ("services.mapping", "services.conflict_resolver"):
        profile = ["-m", "cProfile", "-o", f"{profile_dir}/{module}.prof"] if profile_dir else []
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable, *profile, "-m", module, cwd=ROOT, env=env, stdout=log, stderr=log
            )
        )
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=30)
        log.close()


async def _publish(producer: AIOKafkaProducer, topic: str, count: int, rate: float | None) -> None:
    started = time.perf_counter()
    pending = []
    for i in range(count):
        record_id = f"r-{uuid.uuid4().hex[:12]}"
        key = f"{TENANT}/partners/{record_id}".encode()
        pending.append(await producer.send(topic, _change(record_id).SerializeToString(), key=key))
        if rate is not None:
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
    await asyncio.gather(*pending)


async def _writes(consumer: AIOKafkaConsumer, count: int, within: float) -> list[tuple[float, float]]:
    """(origin commit, WriteRecords timestamp) in seconds for the next ``count`` commands."""
    seen: list[tuple[float, float]] = []
    async with asyncio.timeout(within):
        while len(seen) < count:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    command = write_records_pb2.WriteRecords.FromString(record.value or b"")
                    seen.append(
                        (command.origin_commit_time.ToDatetime(tzinfo=UTC).timestamp(), record.timestamp / 1000)
                    )
    return seen


async def _run() -> Result:
    async with bench_stack("bench-sync") as servers:
        await migrate(servers.dsn)
        conn = await asyncpg.connect(servers.dsn)
        try:
            await ConfigStore(conn).apply([parse_tenant_config(CONFIG)], "bench")
        finally:
            await conn.close()
        source, target = servers.names(Topic.APP_CHANGES), servers.names(Topic.CRM_WRITES)
        producer = AIOKafkaProducer(
            bootstrap_servers=servers.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5
        )
        consumer = AIOKafkaConsumer(target, bootstrap_servers=servers.bootstrap_servers, auto_offset_reset="latest")
        await producer.start()
        await consumer.start()
        try:
            async with _services(servers) as processes:
                # Warm up: both services joined their groups and handled a first event.
                await _publish(producer, source, 1, None)
                await _writes(consumer, 1, within=120)
                cpu_warm = [_cpu_seconds(p.pid) for p in processes]

                started = time.time()
                await _publish(producer, source, BURST, None)
                burst = await _writes(consumer, BURST, within=600)
                throughput = BURST / (max(ts for _, ts in burst) - started)

                steady = asyncio.create_task(_writes(consumer, STEADY_RATE * STEADY_SECONDS, within=300))
                await _publish(producer, source, STEADY_RATE * STEADY_SECONDS, STEADY_RATE)
                latencies = [ts - origin for origin, ts in await steady]
                memory = [rss_mib(p.pid) for p in processes]
                cpu = [_cpu_seconds(p.pid) - warm for p, warm in zip(processes, cpu_warm, strict=True)]
        finally:
            await consumer.stop()
            await producer.stop()
    total = BURST + STEADY_RATE * STEADY_SECONDS
    return Result(
        "mapping + conflict-resolver",
        {"burst": BURST, "steady": f"{STEADY_RATE}/s for {STEADY_SECONDS} s", "path": "app-changes → crm-writes"},
        [
            Figure("mapped + resolved, burst (events/s)", throughput, "events/s"),
            Figure(f"added latency p50 at {STEADY_RATE}/s", statistics.median(latencies) * 1000, "ms"),
            Figure(f"added latency p99 at {STEADY_RATE}/s", percentile(latencies, 0.99) * 1000, "ms"),
            Figure("mapping peak memory", memory[0], "MiB"),
            Figure("conflict-resolver peak memory", memory[1], "MiB"),
            # Where a 2-core machine's time goes: CPU per event of each service, after start-up.
            Figure("mapping CPU per event", cpu[0] / total * 1e6, "µs"),
            Figure("conflict-resolver CPU per event", cpu[1] / total * 1e6, "µs"),
        ],
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run() -> Result:
    return asyncio.run(_run())

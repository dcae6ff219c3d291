"""Mapping isolation: one tenant's object pair quarantined, its stream still flowing, beside a quiet one.

A private Kafka broker and PostgreSQL; mapping runs in this process, the load is sent from another.
Tenant "quiet" sends a burst of partner creates alone; then tenant "noisy" sends changes whose
names are too long for its pair until mapping quarantines the pair; then quiet sends the same
burst again while noisy keeps sending as many changes (good ones, now dead-lettered as
quarantined) interleaved with it, and again while noisy sends a steady 1,000 a second (a broken
producer that keeps running). The three bursts (alone, beside the equal burst, beside the steady
stream) are measured in rounds, their order rotated each round; the figures are the medians of the
rounds' ratios of quiet's changes mapped per second beside noisy over alone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bench.load import end_offset, interleaved, median_ratio, produce
from bench.report import Figure, Result, spread
from bench.stack import BenchStack, bench_stack
from services.admin.config_store import ConfigStore
from services.common.change import Change, ChangeKind, Side
from services.common.codec import record_key
from services.common.contract import to_proto
from services.common.db import migrate
from services.common.settings import KafkaSettings, PostgresSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic
from services.mapping.app import run as run_mapping
from services.mapping.settings import MappingSettings

BURST = 20_000
# Each case is measured this many times, in rotating order; a ratio is the median of the rounds'.
ROUNDS = 6
# Below capacity: quiet (and noisy, beside it) send this many changes per second, in chunks.
STEADY, STEADY_RATE, STEADY_CHUNK = 10_000, 1_000, 50
NAME_LIMIT = 40


def _tenant(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "salesforce": {
                "instanceUrl": "https://bench.my.salesforce.com",
                "auth": {"mode": "oauth_pkce", "clientId": "3MVG9bench"},
                "dailyApiCap": 5000,
            },
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "fields": [
                        {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": NAME_LIMIT}},
                        {"app": "phone", "salesforce": "Phone"},
                    ],
                }
            ],
        },
    }


def _create(tenant: str, name: str) -> tuple[bytes, bytes]:
    record = f"p-{uuid.uuid4().hex}"
    change = Change(
        event_id=uuid.uuid4().hex,
        tenant_id=tenant,
        side=Side.APP,
        object_type="partners",
        record_id=record,
        kind=ChangeKind.CREATE,
        fields={"name": name, "phone": "+33 1 0000"},
        at=datetime.now(UTC),
        changed=frozenset({"name", "phone"}),
        origin_client="bench-app",
    )
    return to_proto(change).SerializeToString(), record_key(tenant, "partners", record)


def run() -> Result:
    return asyncio.run(_run())


async def _run() -> Result:
    async with bench_stack("bench-quarantine") as servers:
        figures = await _measure(servers)
    return Result(
        "quarantine",
        {
            "burst": BURST,
            "steady": f"{STEADY:,} at {STEADY_RATE:,}/s",
            "changes": "one-record partner creates",
            "noisy's pair": "quarantined",
        },
        figures,
        notes=[
            "beside: noisy sends one quarantined change per quiet change, interleaved (twice the input)",
            "the load is sent by a process of its own; mapping runs in this one",
        ],
    )


async def _measure(servers: BenchStack) -> list[Figure]:
    await migrate(servers.dsn)
    conn = await asyncpg.connect(servers.dsn)
    try:
        configs = [parse_tenant_config(_tenant("quiet")), parse_tenant_config(_tenant("noisy"))]
        await ConfigStore(conn).apply(configs, "bench")
    finally:
        await conn.close()
    settings = MappingSettings(
        kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=servers.names.prefix),
        postgres=PostgresSettings(dsn=SecretStr(servers.dsn)),
    )
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", install_global=False, registry=CollectorRegistry()
    )
    changes, mapped, dead = (
        servers.names(Topic.APP_CHANGES),
        servers.names(Topic.MAPPED_CHANGES),
        servers.names(Topic.APP_CHANGES_DLQ),
    )
    offsets = AIOKafkaConsumer(mapped, dead, bootstrap_servers=servers.bootstrap_servers)
    await offsets.start()
    loader = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    # Noisy's steady stream during quiet's burst comes from a process of its own.
    trickler = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    async def publish(
        names: list[tuple[str, str]], per_second: float | None = None, pool: ProcessPoolExecutor = loader
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(
            pool, produce, servers.bootstrap_servers, changes, _create, names, per_second, STEADY_CHUNK
        )

    async def until(topic: str, count: int) -> None:
        async with asyncio.timeout(1800):
            # Polls the broker: nothing in this process says mapping published.
            while await end_offset(offsets, topic) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    async def send(count: int, noise: bool, per_second: float | None = None) -> float:
        """Seconds from the first send of ``count`` quiet changes (each followed by a noisy one
        with ``noise``, both at ``per_second`` each) to the last mapped."""
        target = await end_offset(offsets, mapped) + count
        names = [("quiet", f"quiet {n}") for n in range(count)]
        if noise:
            names = [name for n, quiet in enumerate(names) for name in (quiet, ("noisy", f"noisy {n}"))]
        started = time.perf_counter()
        rate = None if per_second is None else per_second * (2 if noise else 1)
        await asyncio.gather(publish(names, rate), until(mapped, target))
        return time.perf_counter() - started

    async def burst_beside_trickle() -> float:
        """Seconds for quiet's burst while noisy keeps sending ``STEADY_RATE`` quarantined changes a second."""
        target = await end_offset(offsets, mapped) + BURST
        noise = [("noisy", f"noisy {n}") for n in range(STEADY)]
        trickle = asyncio.ensure_future(publish(noise, STEADY_RATE, trickler))
        started = time.perf_counter()
        await asyncio.gather(publish([("quiet", f"quiet {n}") for n in range(BURST)]), until(mapped, target))
        seconds = time.perf_counter() - started
        await trickle
        return seconds

    try:
        # The loader processes start (and import) before anything is timed.
        await asyncio.gather(publish([]), publish([], pool=trickler))
        async with run_mapping(settings, telemetry):
            # Warm-up (not counted): the first burst also pays for connections, plans and caches.
            await send(BURST // 4, noise=False)
            steady_alone = await send(STEADY, noise=False, per_second=STEADY_RATE)
            await publish([("noisy", "x" * (NAME_LIMIT + 1)) for _ in range(150)])
            await until(dead, 150)
            # Quiet alone is quiet's burst with noisy silent: its quarantine costs nothing then.
            bursts = await interleaved(
                ROUNDS,
                {
                    "alone": lambda: send(BURST, noise=False),
                    "beside": lambda: send(BURST, noise=True),
                    "trickle": burst_beside_trickle,
                },
            )
            steady_beside = await send(STEADY, noise=True, per_second=STEADY_RATE)
            quarantined = telemetry.metrics.registry.get_sample_value(
                "duplex_quarantined_pairs", {"service": "mapping", "tenant": "noisy", "pair": "partners"}
            )
    finally:
        loader.shutdown()
        trickler.shutdown()
        await offsets.stop()

    def tail(seconds: float) -> float:
        return 1000 * (seconds - STEADY / STEADY_RATE)

    beside = median_ratio(bursts["alone"], bursts["beside"])
    trickle = median_ratio(bursts["alone"], bursts["trickle"])
    return [
        Figure(
            "quiet alone: mapped (changes/s, median)",
            statistics.median(BURST / s for s in bursts["alone"]),
            "changes/s",
        ),
        Figure(f"beside noisy's equal quarantined burst / alone{spread(beside)}", beside[0], "ratio", target=0.9),
        Figure(f"beside noisy's stream at {STEADY_RATE:,}/s / alone{spread(trickle)}", trickle[0], "ratio", target=0.9),
        Figure(
            f"steady {STEADY_RATE:,}/s each: quiet's last change mapped after its send, alone", tail(steady_alone), "ms"
        ),
        Figure("steady: the same beside noisy's quarantined stream", tail(steady_beside), "ms"),
        Figure("steady: quiet mapped changes/s beside / alone", steady_alone / steady_beside, "ratio", target=0.9),
        Figure("noisy's pair quarantined (1 = yes)", quarantined or 0.0, "gauge", target=1.0),
    ]

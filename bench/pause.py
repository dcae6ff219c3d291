"""Pause isolation: one tenant paused, its changes still arriving, beside a busy one.

A private Kafka broker and PostgreSQL; the conflict-resolver runs in this process, the load is sent
from another. Tenant "busy" sends a burst of mapped partner creates alone; then tenant "paused" is
paused (both ways) and busy sends the same burst again interleaved with as many of paused's, whose
changes the resolver holds in PostgreSQL undecided (held_inputs; a pause of one way would hold the
decided writes in held_outputs instead). The three bursts (alone, beside an equal burst of
paused's, beside paused sending a steady 500 a second) are measured in rounds, their order rotated
each round; the figures are the medians of the rounds' ratios of busy's writes per second beside
over alone (the third is issue 16's case: a paused tenant's app keeps working while a busy tenant
bursts); and how fast paused's held changes are decided and their writes go out once it is
resumed.
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
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bench.load import end_offset, interleaved, median_ratio, produce
from bench.report import Figure, Result, spread
from bench.stack import BenchStack, bench_stack
from services.admin.config_store import ConfigStore
from services.common.codec import link_key
from services.common.db import migrate
from services.common.pauses import EVERY_PAIR, Way, pause, resume
from services.common.settings import KafkaSettings, PostgresSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic
from services.conflict_resolver.app import run as run_resolver
from services.conflict_resolver.settings import ResolverSettings

BURST = 20_000
# Each case is measured this many times, in rotating order; a ratio is the median of the rounds'.
ROUNDS = 6
# Below capacity: busy (and the paused tenant, beside it) send this many changes per second, in chunks.
STEADY, STEADY_RATE, STEADY_CHUNK = 10_000, 500, 25


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
                    "fields": [{"app": "name", "salesforce": "Name"}, {"app": "phone", "salesforce": "Phone"}],
                }
            ],
        },
    }


def _create(tenant: str, n: int) -> tuple[bytes, bytes]:
    link = uuid.uuid4().hex
    event = change_mapped_pb2.ChangeMapped(
        event_id=uuid.uuid4().hex,
        tenant_id=tenant,
        link_id=link,
        object_pair="partners",
        mapping_version=1,
        origin_side=record_changed_pb2.SIDE_APP,
        kind=record_changed_pb2.CHANGE_KIND_CREATE,
        app_record_id=f"p-{link}",
        external_id=f"dx-{link}",
        source_event_id=uuid.uuid4().hex,
    )
    for app, crm, value in (("name", "Name", f"{tenant} {n}"), ("phone", "Phone", "+33 1 0000")):
        field = event.fields.add(app_field=app, crm_field=crm, changed=True)
        field.app_value.string_value = value
        field.crm_value.string_value = value
    event.origin_commit_time.FromDatetime(datetime.now(UTC))
    return event.SerializeToString(), link_key(tenant, link)


def run() -> Result:
    return asyncio.run(_run())


async def _run() -> Result:
    async with bench_stack("bench-pause") as servers:
        figures = await _measure(servers)
    return Result(
        "pause",
        {
            "burst": BURST,
            "steady": f"{STEADY:,} at {STEADY_RATE:,}/s",
            "changes": "one-record partner creates, mapped",
            "paused": "both ways, every pair",
        },
        figures,
        notes=[
            "beside: the paused tenant sends one change per busy change, interleaved (twice the input)",
            "the load is sent by a process of its own; the conflict-resolver runs in this one",
            "CPU figures: process time over a burst, per change; the machine's other processes (Kafka,"
            " PostgreSQL, anything else running) share its cores and are not counted",
        ],
    )


async def _measure(servers: BenchStack) -> list[Figure]:
    await migrate(servers.dsn)
    db = await asyncpg.connect(servers.dsn)
    await ConfigStore(db).apply([parse_tenant_config(_tenant("busy")), parse_tenant_config(_tenant("paused"))], "bench")
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=servers.names.prefix),
        postgres=PostgresSettings(dsn=SecretStr(servers.dsn)),
    )
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="conflict-resolver", install_global=False, registry=CollectorRegistry()
    )
    changes, writes = servers.names(Topic.MAPPED_CHANGES), servers.names(Topic.CRM_WRITES)
    offsets = AIOKafkaConsumer(writes, bootstrap_servers=servers.bootstrap_servers)
    await offsets.start()
    loader = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    # The paused tenant's steady stream during busy's burst comes from a process of its own.
    trickler = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    async def publish(
        tenants: list[tuple[str, int]], per_second: float | None = None, pool: ProcessPoolExecutor = loader
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(
            pool, produce, servers.bootstrap_servers, changes, _create, tenants, per_second, STEADY_CHUNK
        )

    async def until_written(count: int) -> None:
        async with asyncio.timeout(1800):
            # Polls the broker: nothing in this process says the resolver published.
            while await end_offset(offsets, writes) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    async def loader_cpu() -> float:
        return await asyncio.get_running_loop().run_in_executor(loader, time.process_time)

    async def send(count: int, beside_paused: bool, per_second: float | None = None) -> float:
        """Seconds from the first send of ``count`` busy changes (each followed by a paused
        tenant's with ``beside_paused``, both at ``per_second`` each) to busy's last write published."""
        target = await end_offset(offsets, writes) + count
        load = [("busy", n) for n in range(count)]
        if beside_paused:
            load = [item for n, busy in enumerate(load) for item in (busy, ("paused", n))]
        rate = None if per_second is None else per_second * (2 if beside_paused else 1)
        cpu, sent_cpu = time.process_time(), await loader_cpu()
        started = time.perf_counter()
        await asyncio.gather(publish(load, rate), until_written(target))
        seconds = time.perf_counter() - started
        own, load_cpu = cpu_seconds.get((count, beside_paused), (0.0, 0.0))
        cpu_seconds[(count, beside_paused)] = (
            own + time.process_time() - cpu,
            load_cpu + await loader_cpu() - sent_cpu,
        )
        return seconds

    async def burst_beside_trickle() -> float:
        """Seconds for busy's burst while the paused tenant keeps sending ``STEADY_RATE`` a second."""
        target = await end_offset(offsets, writes) + BURST
        trickle = asyncio.ensure_future(publish([("paused", n) for n in range(STEADY)], STEADY_RATE, trickler))
        started = time.perf_counter()
        await asyncio.gather(publish([("busy", n) for n in range(BURST)]), until_written(target))
        seconds = time.perf_counter() - started
        await trickle
        return seconds

    # (changes, beside) -> CPU seconds of this process (the resolver's) and of the load's, summed over sends.
    cpu_seconds: dict[tuple[int, bool], tuple[float, float]] = {}

    try:
        # The loader processes start (and import) before anything is timed.
        await asyncio.gather(publish([]), publish([], pool=trickler))
        async with run_resolver(settings, telemetry):
            # Warm-up (not counted): the first burst also pays for connections, plans and caches.
            await send(BURST // 4, beside_paused=False)
            steady_alone = await send(STEADY, beside_paused=False, per_second=STEADY_RATE)
            # Busy alone is busy's burst with the paused tenant silent: the pause holds nothing then.
            await pause(db, "paused", [EVERY_PAIR], tuple(Way), "bench", "bench")
            bursts = await interleaved(
                ROUNDS,
                {
                    "alone": lambda: send(BURST, beside_paused=False),
                    "beside": lambda: send(BURST, beside_paused=True),
                    "trickle": burst_beside_trickle,
                },
            )
            steady_beside = await send(STEADY, beside_paused=True, per_second=STEADY_RATE)
            # Each held change, decided on release, is one write (none is decided while paused both ways).
            held = int(
                await db.fetchval(
                    "SELECT (SELECT count(*) FROM held_inputs WHERE tenant_id = 'paused')"
                    " + (SELECT count(*) FROM held_outputs WHERE tenant_id = 'paused')"
                )
            )
            target = await end_offset(offsets, writes) + held
            started = time.perf_counter()
            await resume(db, "paused", None, tuple(Way))
            await until_written(target)
            released = held / (time.perf_counter() - started)
    finally:
        loader.shutdown()
        trickler.shutdown()
        await offsets.stop()
        await db.close()

    def tail(seconds: float) -> float:
        return 1000 * (seconds - STEADY / STEADY_RATE)

    def per_change(count: int, beside: bool, process: int) -> float:
        """Microseconds of CPU per busy change of a send, in this process (0) or the load's (1)."""
        return 1e6 * cpu_seconds[(count, beside)][process] / (count * ROUNDS)

    alone = statistics.median(BURST / s for s in bursts["alone"])
    beside = median_ratio(bursts["alone"], bursts["beside"])
    trickle = median_ratio(bursts["alone"], bursts["trickle"])
    return [
        Figure("busy alone: writes published (changes/s, median)", alone, "changes/s"),
        Figure(f"beside the paused's equal burst / alone{spread(beside)}", beside[0], "ratio", target=0.9),
        Figure(
            f"beside the paused sending {STEADY_RATE:,}/s / alone{spread(trickle)}", trickle[0], "ratio", target=0.9
        ),
        Figure(f"steady {STEADY_RATE:,}/s each: busy's last write after its send, alone", tail(steady_alone), "ms"),
        Figure("steady: the same beside the paused tenant's stream", tail(steady_beside), "ms"),
        Figure("steady: busy's writes/s beside / alone", steady_alone / steady_beside, "ratio", target=0.9),
        # Where the paused tenant's cost goes: CPU this process (the resolver, and the bench's polling)
        # and the load's process spent over each burst (the broker's and PostgreSQL's are not counted).
        Figure("burst CPU of the resolver's process per busy change, alone", per_change(BURST, False, 0), "µs"),
        Figure(
            "burst CPU of the resolver's process per paused change, beside (the beside burst's, less alone's)",
            per_change(BURST, True, 0) - per_change(BURST, False, 0),
            "µs",
        ),
        Figure("burst CPU of the load's process per change sent", per_change(BURST, True, 1) / 2, "µs"),
        Figure("paused tenant's changes held", held, "changes", target=ROUNDS * (BURST + STEADY) + STEADY),
        Figure("held changes decided and written after resume (changes/s)", released, "changes/s"),
    ]

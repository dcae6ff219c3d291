"""The whole product end to end: app ⇄ Salesforce through every service, each its own OS process.

A private Kafka broker, PostgreSQL server and Salesforce emulator are started; a fresh org (an
admin user, Duplex's connected app, ``Duplex_Id__c``) and a fresh tenant (partners ⇄ Account) are
created, and :class:`devstack.pipeline.Pipeline` runs the five services and the example partners
app (its tables in Duplex's database, schema ``partners_app``) with a private topic prefix.
Phases, one after another, each waiting for the pipeline to go quiet before the next:

1. backfill: Accounts created before cdc-ingest starts; records/s = Accounts over the time from
   starting cdc-ingest to the poll that saw the last of them in the app's table;
2. app → Salesforce, burst: partners created with the example app's own functions (100 per
   transaction, as an import would); its outbox relay publishes them. events/s = records over the
   time from the first outbox commit to the last ``WriteSettled.settled_at`` (the writer's clock
   when Salesforce answered) on write-outcomes; a SOQL ``COUNT()`` as the admin checks them;
3. Salesforce → app, burst: Accounts created by the org's admin (sObject Collections, 200 per
   call, ``Sforce-Call-Options: client=bench``); events/s = records over the time from the first
   Account's ``LastModifiedDate`` (Salesforce's commit stamp, mapped to the app's
   ``crm_modified_at``) to the poll that saw the last one in the app's table;
4. steady latency, per record, at a fixed rate: app edits (one transaction each) → latency =
   ``settled_at - origin_commit_time`` of its WriteSettled; Salesforce edits (sObject Collections
   PATCH, 10 calls a second) → latency = the app row's ``updated_at`` (the applying transaction's
   start) - its ``crm_modified_at`` (the edit's ``LastModifiedDate``). Rates above a direction's
   burst throughput are skipped (they cannot be sustained) unless BENCH_PIPELINE_FORCE_RATES=1.

"Duplex alone" figures leave the example app out: to the last app-update on Kafka (Salesforce →
app), from the first app-change on Kafka (app → Salesforce), and the outbox relay's own share.
Also: API calls Duplex made (the emulator's count for the tenant's ``callOptionsClient``) per
1,000 records the writer wrote, each process's peak RSS (VmHWM), each process's CPU per phase
(utime+stime; PostgreSQL summed over its backends), the last Kafka timestamp each topic saw per
phase (where a burst spends its time), and consumer-group lag over time.

Sizes: BENCH_PIPELINE_BACKFILL (10000), _APP_RECORDS (5000), _CRM_RECORDS (5000), _RATES
("100,1000"), _STEADY_SECONDS (20), _WAIT (deadline of every wait, 150 s), _SETTLE (90 s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import ssl
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from duplex.change.v1 import record_changed_pb2
from duplex.writer.v1 import write_settled_pb2

from bench.report import Figure, Result, rss_mib
from bench.stack import percentile
from devstack.emulator import API_VERSION, EmulatorProcess, org_spec, start_emulator
from devstack.kafka import KafkaPorts, KafkaServer
from devstack.pipeline import Pipeline, PipelineConfig
from devstack.ports import pick_free_ports
from devstack.postgres import PostgresServer
from examples.partners_app import app as partners
from examples.partners_app import contract
from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.tenant_config import parse_tenant_config
from services.common.topic_admin import ensure_topics
from services.common.topics import Topic, TopicNames, load_topic_table


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"BENCH_PIPELINE_{name}", default))


BACKFILL = _env_int("BACKFILL", 10_000)
APP_RECORDS = _env_int("APP_RECORDS", 5_000)
CRM_RECORDS = _env_int("CRM_RECORDS", 5_000)
RATES = tuple(int(r) for r in os.environ.get("BENCH_PIPELINE_RATES", "100,1000").split(",") if r.strip())
STEADY_SECONDS = _env_int("STEADY_SECONDS", 20)
WAIT = float(_env_int("WAIT", 150))
SETTLE = float(_env_int("SETTLE", 90))
FORCE_RATES = os.environ.get("BENCH_PIPELINE_FORCE_RATES") == "1"
# Connections committing the app-side import at once.
IMPORTERS = _env_int("IMPORTERS", 4)

API = f"/services/data/v{API_VERSION}"
BATCH = 200
BENCH_CLIENT = "bench"
SECRET_ENV = "DUPLEX_SECRET_BENCH_PIPELINE_SF"
PIPELINE_TOPICS = (
    Topic.APP_CHANGES,
    Topic.CRM_CHANGES,
    Topic.MAPPED_CHANGES,
    Topic.CRM_WRITES,
    Topic.WRITE_OUTCOMES,
    Topic.APP_UPDATES,
)
SUCCEEDED = write_settled_pb2.WRITE_STATUS_SUCCEEDED


# --------------------------------------------------------------------------- the world


def tenant_document(tenant: str, alias: str, emulator: EmulatorProcess) -> dict[str, Any]:
    """partners ⇄ Account: name and notes newest-wins both ways, phone app → CRM, Id and LastModifiedDate CRM → app."""
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": tenant},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "client_credentials",
                    "clientId": f"{alias}-client",
                    "clientSecret": {"secretRef": {"env": SECRET_ENV}},
                },
                "dailyApiCap": 100_000,
                "callOptionsClient": f"duplex-{tenant}",
            },
            "sync": {"cdc": True, "backfill": {"ingestion": "rest"}},
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners", "idField": "id"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "conflictPolicy": "newest_wins",
                    "fields": [
                        {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": 255}},
                        {"app": "notes", "salesforce": "Description", "transform": {"type": "string"}},
                        {"app": "phone", "salesforce": "Phone", "direction": "app_to_crm"},
                        {"app": "salesforce_id", "salesforce": "Id", "direction": "crm_to_app"},
                        {
                            "app": "crm_modified_at",
                            "salesforce": "LastModifiedDate",
                            "direction": "crm_to_app",
                            "transform": {"type": "datetime"},
                        },
                    ],
                }
            ],
        },
    }


class Admin:
    """The org's admin user over REST (``client=bench``): not Duplex."""

    def __init__(self, emulator: EmulatorProcess, alias: str) -> None:
        self.alias = alias
        self.http = httpx.AsyncClient(
            base_url=emulator.instance_url,
            verify=ssl.create_default_context(cafile=emulator.ca_cert),
            timeout=60,
        )
        self.headers: dict[str, str] = {}

    async def login(self) -> None:
        response = await self.http.post(
            "/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": f"{self.alias}-client",
                "client_secret": f"{self.alias}-secret",
                "username": f"admin@{self.alias}.example",
                "password": f"{self.alias}-password",
            },
        )
        response.raise_for_status()
        token = response.json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}", "Sforce-Call-Options": f"client={BENCH_CLIENT}"}

    async def collection(self, method: str, records: list[dict[str, Any]]) -> list[str]:
        body = {"allOrNone": True, "records": [{"attributes": {"type": "Account"}, **r} for r in records]}
        response = await self.http.request(method, f"{API}/composite/sobjects", json=body, headers=self.headers)
        response.raise_for_status()
        results = response.json()
        failed = [r for r in results if not r.get("success")]
        if failed:
            raise RuntimeError(f"{method} sObject Collections: {failed[:3]}")
        return [str(r["id"]) for r in results]

    async def create(self, names: list[str]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(names), BATCH):
            ids += await self.collection("POST", [{"Name": n} for n in names[start : start + BATCH]])
        return ids

    async def count(self, where: str) -> int:
        response = await self.http.get(
            f"{API}/query", params={"q": f"SELECT COUNT() FROM Account WHERE {where}"}, headers=self.headers
        )
        response.raise_for_status()
        return int(response.json()["totalSize"])

    async def close(self) -> None:
        await self.http.aclose()


# --------------------------------------------------------------------------- watching the pipeline


@dataclasses.dataclass
class Watcher:
    """Every event on the pipeline's topics (Kafka timestamp; write-outcomes decoded), and group lag over time."""

    bootstrap: str
    names: TopicNames
    events: list[tuple[Topic, float]] = dataclasses.field(default_factory=list)
    outcomes: list[write_settled_pb2.WriteSettled] = dataclasses.field(default_factory=list)
    lag: list[tuple[float, dict[str, int]]] = dataclasses.field(default_factory=list)
    # (origin commit, Kafka timestamp) of every app-update: Duplex's share of Salesforce → app latency.
    updates: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    # CPU seconds used so far per process, sampled with the lag.
    cpu: list[tuple[float, dict[str, float]]] = dataclasses.field(default_factory=list)
    cpu_of: Callable[[], dict[str, float]] | None = None
    last_event: float = 0.0

    async def consume(self) -> None:
        by_name = {self.names(t): t for t in PIPELINE_TOPICS}
        consumer = AIOKafkaConsumer(
            *by_name, bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=200, max_records=5000)).items():
                    topic = by_name[tp.topic]
                    for record in records:
                        self.events.append((topic, record.timestamp / 1000))
                        if topic is Topic.WRITE_OUTCOMES:
                            self.outcomes.append(write_settled_pb2.WriteSettled.FromString(record.value or b""))
                        elif topic is Topic.APP_UPDATES:
                            update = record_changed_pb2.RecordChanged.FromString(record.value or b"")
                            origin = update.origin_commit_time.ToMicroseconds() / 1e6
                            self.updates.append((origin, record.timestamp / 1000))
                    self.last_event = time.time()
        finally:
            await consumer.stop()

    async def sample_lag(self, every: float = 1.0) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        partitions = [
            TopicPartition(self.names(t), p)
            for t in PIPELINE_TOPICS
            for p in range(self.names.table.topics[t].partitions)
        ]
        try:
            while True:
                if self.cpu_of is not None:
                    self.cpu.append((time.time(), await asyncio.to_thread(self.cpu_of)))
                try:
                    self.lag.append((time.time(), await self._lag(admin, consumer, partitions)))
                except Exception as exc:  # a sample lost is no reason to stop the benchmark
                    self.lag.append((time.time(), {f"error {type(exc).__name__}": -1}))
                await asyncio.sleep(every)
        finally:
            await consumer.stop()
            await admin.close()

    @staticmethod
    async def _lag(admin: Any, consumer: Any, partitions: list[TopicPartition]) -> dict[str, int]:
        ends = await consumer.end_offsets(partitions)
        lags: dict[str, int] = {}
        for group, _protocol in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            for tp, meta in committed.items():
                if tp in ends:
                    lags[group] = lags.get(group, 0) + max(0, ends[tp] - meta.offset)
        return lags

    def outcomes_since(self, at: float) -> list[write_settled_pb2.WriteSettled]:
        return [o for o in self.outcomes if o.origin_commit_time.ToMicroseconds() / 1e6 >= at]

    def busy(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """Seconds covered and CPU seconds per process between the samples nearest ``start`` and ``end``."""
        inside = [(t, c) for t, c in self.cpu if start - 1 <= t <= end + 1]
        if len(inside) < 2:
            return 0.0, {}
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return t1 - t0, {k: v - c0.get(k, 0.0) for k, v in c1.items()}

    def nth(self, topic: Topic, since: float, n: int) -> float | None:
        """Kafka timestamp of the ``n``-th event on ``topic`` at or after ``since``, if it came."""
        stamps = sorted(ts for t, ts in self.events if t is topic and ts >= since)
        return stamps[n - 1] if len(stamps) >= n else None

    def profile(self, start: float, end: float) -> str:
        """Per topic: events in [start, end) and the last one's Kafka timestamp, seconds after ``start``."""
        parts = []
        for topic in PIPELINE_TOPICS:
            stamps = [ts for t, ts in self.events if t is topic and start <= ts < end]
            if stamps:
                parts.append(f"{topic.value} {len(stamps)} (last +{max(stamps) - start:.1f}s)")
        return "; ".join(parts) or "no events"

    def lag_timeline(self, start: float, end: float, lines: int = 12) -> list[str]:
        samples = [(t, lags) for t, lags in self.lag if start <= t < end]
        step = max(1, len(samples) // lines)
        out = []
        for t, lags in samples[::step]:
            shown = " ".join(f"{g}={n}" for g, n in sorted(lags.items()) if n) or "all caught up"
            out.append(f"    +{t - start:5.1f}s  {shown}")
        return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(root: int) -> float:
    """CPU of a process and all its descendants now alive (PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _cpu_seconds(pid)
        todo += children.get(pid, [])
    return total


@dataclasses.dataclass
class Run:
    kafka: KafkaServer
    postgres: PostgresServer
    emulator: EmulatorProcess
    names: TopicNames
    pipeline: Pipeline
    admin: Admin
    app: Any  # an asyncpg connection to the app's database
    pool: Any  # an asyncpg pool on it, for concurrent app edits
    watcher: Watcher
    org_id: str
    tenant: str
    tag: str
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def duplex_client(self) -> str:
        return f"duplex-{self.tenant}"

    def pids(self) -> dict[str, int]:
        pids = {name: s.pid for name, s in self.pipeline.services.items()}
        pids["emulator"] = self.emulator.process.pid
        pids["kafka"] = self.kafka.pid
        pids["bench"] = os.getpid()
        return {name: pid for name, pid in pids.items() if pid is not None}

    def cpu(self) -> dict[str, float]:
        cpu = {name: _cpu_seconds(pid) for name, pid in self.pids().items()}
        if self.postgres.pid is not None:
            cpu["postgres"] = _tree_cpu_seconds(self.postgres.pid)
        return cpu

    async def usage(self) -> int:
        response = await asyncio.to_thread(self.emulator.admin, "GET", f"/orgs/{self.org_id}/usage")
        return int(response.json()["by_client"].get(self.duplex_client, 0))

    async def app_count(self, prefix: str) -> int:
        return int(
            await self.app.fetchval("SELECT count(*) FROM partners_app.partners WHERE name LIKE $1", prefix + "%")
        )


async def until(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.2) -> float | None:
    """Wall-clock time when ``check()`` first held, or None after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return time.time()
        await asyncio.sleep(every)
    return None


# --------------------------------------------------------------------------- phases


@asynccontextmanager
async def phase(run: Run, name: str) -> AsyncIterator[dict[str, float]]:
    """Notes the phase's CPU per process, topic profile and lag timeline; waits for quiet afterwards."""
    cpu_before, began = run.cpu(), time.time()
    marks: dict[str, float] = {"start": began}
    run.notes.append(f"{name}:")
    try:
        yield marks
    finally:
        settled = await settle(run)
        ended = time.time()
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in run.cpu().items()}
        wall = ended - began
        run.notes.append(f"  phase took {wall:.1f}s incl. settling{'' if settled else ' (DID NOT SETTLE)'}")
        origin = marks.get("t0", began)
        run.notes.append(f"  topics (+s from the first origin commit): {run.watcher.profile(origin, ended)}")
        busiest = sorted(cpu.items(), key=lambda kv: -kv[1])
        run.notes.append(
            "  CPU s (% of one core over the phase): "
            + ", ".join(f"{k} {v:.1f} ({v / wall * 100:.0f}%)" for k, v in busiest if v >= 0.05)
        )
        run.notes.append("  consumer-group lag (committed offsets) over time:")
        run.notes += run.watcher.lag_timeline(began, ended)


async def settle(run: Run) -> bool:
    """Wait until every group caught up, the outbox is drained and no event arrived for 3 s."""

    async def quiet() -> bool:
        if not run.watcher.lag or time.time() - run.watcher.lag[-1][0] > 3:
            return False
        lags = run.watcher.lag[-1][1]
        unpublished = await run.app.fetchval("SELECT count(*) FROM partners_app.outbox WHERE published_at IS NULL")
        return not any(lags.values()) and not unpublished and time.time() - run.watcher.last_event > 3

    return await until(quiet, SETTLE, every=0.5) is not None


async def backfill(run: Run) -> None:
    prefix = f"bf {run.tag} "
    async with phase(run, f"backfill of {BACKFILL:,} Accounts") as marks:
        await run.admin.create([f"{prefix}{i:06d}" for i in range(BACKFILL)])
        marks["t0"] = started = time.time()
        await run.pipeline.start(["cdc-ingest"])
        done = await until(lambda: _at_least(run.app_count(prefix), BACKFILL), WAIT, every=0.25)
        rows = await run.app.fetch("SELECT status, method, emitted FROM backfills WHERE tenant_id = $1", run.tenant)
        run.notes.append(f"backfills table: {[dict(r) for r in rows]}")
        if done is None:
            got = await run.app_count(prefix)
            run.missing.append(f"backfill: {got:,} of {BACKFILL:,} Accounts in the app after {WAIT:.0f}s")
            return
        run.figures.append(Figure("backfill: cdc-ingest start → all in app", BACKFILL / (done - started), "records/s"))
        _cpu_note(run, "the backfill", started, done, BACKFILL)
        published = run.watcher.nth(Topic.APP_UPDATES, started, BACKFILL)
        if published is not None:
            rate = BACKFILL / (published - started)
            run.figures.append(Figure("  Duplex alone: → last on app-updates", rate, "records/s"))


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def app_to_crm(run: Run) -> float | None:
    prefix = f"app {run.tag} "
    async with phase(run, f"app → Salesforce burst, {APP_RECORDS:,} creates") as marks:
        usage_before, outcomes_before = await run.usage(), len(run.watcher.outcomes)
        marks["t0"] = started = time.time()
        ids: list[str] = []
        chunks = asyncio.Queue[list[dict[str, Any]]]()
        for start in range(0, APP_RECORDS, 100):
            rows = [{"name": f"{prefix}{i:06d}", "phone": f"+1 555 {i:06d}"} for i in range(start, start + 100)]
            chunks.put_nowait(rows[: APP_RECORDS - start])

        async def importer() -> None:
            # Several users importing at once: one transaction per 100 partners.
            async with run.pool.acquire() as conn:
                while not chunks.empty():
                    ids.extend(await partners.create_partners(conn, chunks.get_nowait()))

        await asyncio.gather(*(importer() for _ in range(IMPORTERS)))
        committed = time.time()

        def settled() -> list[write_settled_pb2.WriteSettled]:
            return [o for o in run.watcher.outcomes_since(started) if o.status == SUCCEEDED]

        async def all_written() -> bool:
            return len({o.link_id for o in settled()}) >= APP_RECORDS

        done = await until(all_written, WAIT)
        written = settled()
        outbox = await run.app.fetchrow(
            "SELECT min(committed_at) AS first, max(published_at) AS relayed, count(*) AS n"
            " FROM partners_app.outbox WHERE record_id = ANY($1::text[]) AND kind = 'create'",
            ids,
        )
        in_crm = await run.admin.count(f"Name LIKE '{prefix}%'")
        run.notes.append(
            f"app → Salesforce: commits took {committed - started:.1f}s; outbox relayed the last at"
            f" +{outbox['relayed'].timestamp() - started:.1f}s; SOQL COUNT() finds {in_crm:,} of {APP_RECORDS:,}"
        )
        if done is None or not written:
            run.missing.append(
                f"app → Salesforce: {len({o.link_id for o in written}):,} of {APP_RECORDS:,} written after {WAIT:.0f}s"
                f" (SOQL COUNT() {in_crm:,})"
            )
            return None
        first = outbox["first"].timestamp()
        last = max(o.settled_at.ToMicroseconds() / 1e6 for o in written)
        _cpu_note(run, "the burst", first, last, APP_RECORDS)
        rate = APP_RECORDS / (last - first)
        run.figures.append(Figure("app → Salesforce, burst (first commit → last written)", rate, "events/s", 5000))
        relay = APP_RECORDS / (outbox["relayed"].timestamp() - first)
        run.figures.append(Figure("  the app's outbox relay alone", relay, "events/s"))
        published = run.watcher.nth(Topic.APP_CHANGES, started, 1)
        if published is not None:
            alone = APP_RECORDS / (last - published)
            run.figures.append(Figure("  Duplex alone: first on app-changes → last written", alone, "events/s"))
        await asyncio.sleep(1)
        calls = await run.usage() - usage_before
        records = sum(1 for o in run.watcher.outcomes[outcomes_before:] if o.status == SUCCEEDED)
        run.figures.append(
            Figure("API calls per 1,000 records written (burst)", calls / records * 1000, "calls", 5.1, False)
        )
        return float(rate)


async def crm_to_app(run: Run) -> float | None:
    prefix = f"crm {run.tag} "
    async with phase(run, f"Salesforce → app burst, {CRM_RECORDS:,} creates") as marks:
        marks["t0"] = started = time.time()
        await run.admin.create([f"{prefix}{i:06d}" for i in range(CRM_RECORDS)])
        written = time.time()
        done = await until(lambda: _at_least(run.app_count(prefix), CRM_RECORDS), WAIT, every=0.1)
        first = await run.app.fetchval(
            "SELECT min(crm_modified_at) FROM partners_app.partners WHERE name LIKE $1", prefix + "%"
        )
        run.notes.append(
            f"Salesforce → app: the admin's {CRM_RECORDS // BATCH} calls took {written - started:.1f}s;"
            f" first LastModifiedDate at +{first.timestamp() - started:.2f}s"
            if first
            else "no row arrived"
        )
        if done is None or first is None:
            got = await run.app_count(prefix)
            run.missing.append(f"Salesforce → app: {got:,} of {CRM_RECORDS:,} in the app after {WAIT:.0f}s")
            return None
        rate = CRM_RECORDS / (done - first.timestamp())
        _cpu_note(run, "the burst", first.timestamp(), done, CRM_RECORDS)
        run.figures.append(Figure("Salesforce → app, burst (first commit → last applied)", rate, "events/s", 5000))
        published = run.watcher.nth(Topic.APP_UPDATES, started, CRM_RECORDS)
        if published is not None:
            alone = CRM_RECORDS / (published - first.timestamp())
            run.figures.append(Figure("  Duplex alone: → last on app-updates", alone, "events/s"))
        return float(rate)


async def steady_app_to_crm(run: Run, rate: int, records: list[str]) -> None:
    seconds = min(STEADY_SECONDS, len(records) / rate)
    count = int(rate * seconds)
    async with phase(run, f"steady app → Salesforce, {rate}/s for {seconds:.0f}s") as marks:
        usage_before, outcomes_before = await run.usage(), len(run.watcher.outcomes)
        marks["t0"] = started = time.time()
        value = f"+9 {rate} {run.tag}"

        async def edit(record_id: str) -> None:
            async with run.pool.acquire() as conn:
                await partners.edit_partner(conn, record_id, {"phone": value})

        await _paced([functools.partial(edit, r) for r in records[:count]], rate, per_tick=max(1, rate // 10))
        offered = time.time() - started

        def settled() -> list[write_settled_pb2.WriteSettled]:
            return [o for o in run.watcher.outcomes_since(started) if o.status == SUCCEEDED]

        done = await until(lambda: _true(len(settled()) >= count), WAIT)
        latencies = [(o.settled_at.ToMicroseconds() - o.origin_commit_time.ToMicroseconds()) / 1e6 for o in settled()]
        run.notes.append(f"steady app → Salesforce {rate}/s: {count:,} edits offered in {offered:.1f}s")
        if done is None:
            run.missing.append(
                f"steady app → Salesforce {rate}/s: {len(latencies):,} of {count:,} written after {WAIT:.0f}s"
            )
        if latencies:
            _latency_figures(run, f"app → SF latency at {rate}/s", latencies)
        relayed = await run.app.fetch(
            "SELECT extract(epoch FROM published_at - committed_at)::float8 AS delay FROM partners_app.outbox"
            " WHERE committed_at >= to_timestamp($1) AND origin_client = $2",
            started,
            contract.CLIENT,
        )
        delays = [r["delay"] for r in relayed if r["delay"] is not None]
        if delays:
            _latency_figures(run, "  of which the app's outbox relay", delays)
        await asyncio.sleep(1)
        calls = await run.usage() - usage_before
        written = sum(1 for o in run.watcher.outcomes[outcomes_before:] if o.status == SUCCEEDED)
        if written:
            run.figures.append(
                Figure(f"API calls per 1,000 records written ({rate}/s)", calls / written * 1000, "calls", 5.1, False)
            )


async def steady_crm_to_app(run: Run, rate: int, crm_ids: list[str]) -> None:
    seconds = min(STEADY_SECONDS, len(crm_ids) / rate)
    count = int(rate * seconds)
    per_call = max(1, rate // 10)
    name = f"steady {rate} {run.tag} "
    async with phase(run, f"steady Salesforce → app, {rate}/s for {seconds:.0f}s") as marks:
        marks["t0"] = started = time.time()
        chunks = [crm_ids[i : i + per_call] for i in range(0, count, per_call)]

        async def patch(chunk: list[str]) -> None:
            await run.admin.collection("PATCH", [{"Id": i, "Name": f"{name}{i}"} for i in chunk])

        await _paced([functools.partial(patch, c) for c in chunks], rate / per_call, per_tick=1)
        offered = time.time() - started
        done = await until(lambda: _at_least(run.app_count(name), count), WAIT, every=0.5)
        rows = await run.app.fetch(
            "SELECT updated_at, crm_modified_at FROM partners_app.partners WHERE name LIKE $1", name + "%"
        )
        latencies = [(r["updated_at"] - r["crm_modified_at"]).total_seconds() for r in rows if r["crm_modified_at"]]
        run.notes.append(
            f"steady Salesforce → app {rate}/s: {count:,} edits ({len(chunks)} calls) offered in {offered:.1f}s"
        )
        if done is None:
            run.missing.append(
                f"steady Salesforce → app {rate}/s: {len(rows):,} of {count:,} applied after {WAIT:.0f}s"
            )
        if latencies:
            _latency_figures(run, f"SF → app latency at {rate}/s", latencies)
        duplex = [ts - origin for origin, ts in run.watcher.updates if origin >= started]
        if duplex:
            _latency_figures(run, "  Duplex alone (commit → app-updates)", duplex)


async def _true(value: bool) -> bool:
    return value


async def _paced(calls: list[Callable[[], Coroutine[Any, Any, None]]], rate: float, per_tick: int) -> None:
    """Start ``per_tick`` calls every ``per_tick / rate`` seconds (concurrently within a tick), keeping to schedule."""
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    for tick, first in enumerate(range(0, len(calls), per_tick)):
        await asyncio.sleep(max(0.0, started + tick * per_tick / rate - time.perf_counter()))
        for call in calls[first : first + per_tick]:
            task = asyncio.create_task(call())
            pending.add(task)
            task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def _cpu_note(run: Run, what: str, start: float, end: float, records: int) -> None:
    """CPU per process while a burst was in flight: where a 2-core machine's time went."""
    span, used = run.watcher.busy(start, end)
    if span <= 0:
        return
    cores = os.cpu_count() or 1
    total = sum(used.values())
    busiest = sorted(used.items(), key=lambda kv: -kv[1])
    run.notes.append(
        f"  CPU while {what} was in flight ({span:.0f}s): {total / span * 100:.0f}% of one core"
        f" ({total / span / cores * 100:.0f}% of the machine's {cores}); CPU ms per record:"
        f" total {total / records * 1000:.1f}, "
        + ", ".join(f"{k} {v / records * 1000:.2f}" for k, v in busiest if v >= 0.05)
    )


def _latency_figures(run: Run, label: str, latencies: list[float]) -> None:
    run.figures.append(Figure(f"{label} p50", statistics.median(latencies) * 1000, "ms"))
    run.figures.append(Figure(f"{label} p99", percentile(latencies, 0.99) * 1000, "ms"))


# --------------------------------------------------------------------------- the run


@asynccontextmanager
async def _world(root: Path) -> AsyncIterator[Run]:
    tag = uuid.uuid4().hex[:6]
    alias, tenant = f"bench{tag}", f"bench-{tag}"
    broker_port, controller_port, pg_port = pick_free_ports(3)
    kafka = KafkaServer(root / "kafka", KafkaPorts(broker_port, controller_port))
    postgres = PostgresServer(root / "postgres", pg_port, durable=False)
    async with AsyncExitStack() as stack:
        await asyncio.to_thread(kafka.start)
        stack.callback(kafka.stop)
        await asyncio.to_thread(postgres.start)
        stack.callback(postgres.stop)
        emulator = await asyncio.to_thread(start_emulator, root / "emulator")
        stack.callback(emulator.stop)
        await kafka.wait_ready()
        await postgres.wait_ready()
        names = TopicNames(load_topic_table(), prefix=f"bench-pipeline-{tag}.")
        await ensure_topics(kafka.bootstrap_servers, names.table, names.prefix)

        response = await asyncio.to_thread(
            emulator.admin, "POST", "/orgs", org_spec(alias, edition="enterprise", licenses=10)
        )
        org_id = str(response.json()["org_id"])
        await migrate(postgres.dsn)
        app = await asyncpg.connect(postgres.dsn)
        stack.push_async_callback(app.close)
        await ConfigStore(app).apply([parse_tenant_config(tenant_document(tenant, alias, emulator))], "bench")
        await partners.migrate(app)
        pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=8)
        stack.push_async_callback(pool.close)

        pipeline = Pipeline(
            PipelineConfig(
                state_dir=root / "state",
                bootstrap_servers=kafka.bootstrap_servers,
                dsn=postgres.dsn,
                pubsub_target=emulator.grpc_target,
                ca_file=emulator.ca_cert,
                topic_prefix=names.prefix,
                tenants=(tenant,),
                secrets={SECRET_ENV: f"{alias}-secret"},
                app_tenant=tenant,
                overrides={"rate-limit-governor": {"GOVERNOR_BURST": "2000"}},
            )
        )
        stack.callback(pipeline.stop)
        admin = Admin(emulator, alias)
        stack.push_async_callback(admin.close)
        await admin.login()

        watcher = Watcher(kafka.bootstrap_servers, names)
        tasks = [asyncio.create_task(watcher.consume()), asyncio.create_task(watcher.sample_lag())]

        async def cancel() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(cancel)
        run = Run(kafka, postgres, emulator, names, pipeline, admin, app, pool, watcher, org_id, tenant, tag)
        watcher.cpu_of = run.cpu
        yield run


async def _run() -> Result:
    parameters: dict[str, object] = {
        "backfill": BACKFILL,
        "app creates": APP_RECORDS,
        "Salesforce creates": CRM_RECORDS,
        "steady": f"{'/'.join(map(str, RATES))} events/s for ≤ {STEADY_SECONDS} s each way",
        "deadline per wait": f"{WAIT:.0f} s",
    }
    result = Result("pipeline (end to end, every service a process)", parameters)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        await asyncio.to_thread(root.chmod, 0o755)  # PostgreSQL runs as its own account when we are root
        async with _world(root) as run:
            try:
                began = time.monotonic()
                # Everything but cdc-ingest: its start begins the backfill.
                await run.pipeline.start([n for n in run.pipeline.services if n != "cdc-ingest"])
                run.notes.append(f"services (but cdc-ingest) healthy after {time.monotonic() - began:.1f}s")
                await backfill(run)
                if not run.pipeline.services["cdc-ingest"].running:
                    await run.pipeline.start(["cdc-ingest"])
                to_crm = await app_to_crm(run)
                to_app = await crm_to_app(run)
                app_rows = [
                    r["id"]
                    for r in await run.app.fetch(
                        "SELECT id FROM partners_app.partners WHERE name LIKE $1 ORDER BY id", f"bf {run.tag} %"
                    )
                ]
                crm_ids = [
                    r["salesforce_id"]
                    for r in await run.app.fetch(
                        "SELECT salesforce_id FROM partners_app.partners WHERE name LIKE $1 AND salesforce_id"
                        " IS NOT NULL ORDER BY id",
                        f"crm {run.tag} %",
                    )
                ]
                # Each rate edits its own records (consecutive edits of one record could be coalesced).
                for rate in RATES:
                    for direction, burst, pool in (("app → SF", to_crm, app_rows), ("SF → app", to_app, crm_ids)):
                        if not FORCE_RATES and rate > 100 and (burst is None or burst < rate):
                            run.notes.append(
                                f"steady {direction} at {rate}/s not run: its burst throughput is"
                                f" {'unknown' if burst is None else f'{burst:,.0f}/s'}, below the rate"
                            )
                            continue
                        if direction == "app → SF":
                            await steady_app_to_crm(run, rate, pool)
                            del app_rows[: rate * STEADY_SECONDS]
                        else:
                            await steady_crm_to_app(run, rate, pool)
                            del crm_ids[: rate * STEADY_SECONDS]
                for name, pid in run.pids().items():
                    if name != "bench":
                        run.figures.append(Figure(f"peak RSS {name}", rss_mib(pid), "MiB"))
                calls = await run.usage()
                written = sum(o.status == SUCCEEDED for o in run.watcher.outcomes)
                up = sorted(n for n, alive in run.pipeline.status().items() if alive)
                run.notes.append(
                    f"Duplex's API calls in all: {calls:,} for {written:,} records written; still running: {up}"
                )
            except Exception as exc:
                run.missing.append(f"aborted: {type(exc).__name__}: {exc}")
            finally:
                result.figures = run.figures
                result.notes = run.notes + [f"MISSING: {m}" for m in run.missing]
                result.notes.append(f"logs (removed afterwards): {run.pipeline.config.directory}")
    return result


def run() -> Result:
    return asyncio.run(_run())

"""Convergence under faults: every part of Duplex fails in turn while both sides keep editing.

Three tenants, each with its own emulated Salesforce org and its own partners app database, run
through one set of services (cdc-ingest, mapping, conflict-resolver, writer, governor), each an OS
process. Both sides edit at random the whole time while the test, one fault after another:
kills each service with SIGKILL and restarts it, restarts the Kafka broker and PostgreSQL, makes
Salesforce answer 503s and lock errors, expires every token, exhausts the org's API limit, injects
CDC gap events and expires the replay ids (events purged, streams dropped), and deletes records.

After the faults stop, the test waits for every record to hold, on both sides, the values the
policies prescribe (the newest edit for newest-wins fields, the owning side's last edit for
one-way fields), then checks: no lost change, no duplicate record on either side, no echo loop
(nothing more is written once converged), and no tenant over its daily API cap (counted by the
emulator per Sforce-Call-Options client). It prints the counts it checked.

One allowance, for what no one can know: a Salesforce edit whose change event was purged before
cdc-ingest read it (replay expiry) reaches Duplex only as the record read back, without the edit's
own time, so a newest-wins field edited on both sides then may end on either side's last edit;
both sides must still agree (see `problems_of`). The test lists every such field.

On failure it prints, for a few records, the sync log and every mapped change with its values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2

from devstack.emulator import EmulatorProcess, org_spec
from devstack.kafka import KafkaServer
from devstack.pipeline import SERVICES, Pipeline, PipelineConfig
from devstack.postgres import PostgresServer, dsn_with_database
from services.admin.config_store import ConfigStore
from services.common.codec import decode_event
from services.common.contract import to_value
from services.common.db import migrate
from services.common.dlq import ERROR_REASON
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from tests.e2e.pipeline.world import (
    FIELDS,
    REP_CLIENT,
    AppSide,
    SalesforceSide,
    Tenant,
    duplex_client,
    secret_env,
    tenant_document,
)

# About 5 minutes, most of it the faults' own pace (each is followed by a while of normal running).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

TENANTS = 3
SEED_PER_SIDE = 12
CAPS = (3_000, 10_000, 10_000)
EDIT_INTERVAL = 0.25  # seconds between one tenant's edits
SETTLE = 6.0  # seconds of normal running after each fault
CONVERGE_WITHIN = 240.0
# The sync path only: the admin API plays no part in convergence.
SERVICE_NAMES = [s.name for s in SERVICES if s.name not in ("partners-app", "admin")]
PIPELINE_TOPICS = (
    Topic.APP_CHANGES,
    Topic.CRM_CHANGES,
    Topic.MAPPED_CHANGES,
    Topic.CRM_WRITES,
    Topic.WRITE_OUTCOMES,
    Topic.APP_UPDATES,
)
DEAD_LETTERS = tuple(t for t in Topic if t.value.endswith("_dlq"))


@dataclasses.dataclass
class Run:
    emulator: EmulatorProcess
    kafka: KafkaServer
    postgres: PostgresServer
    names: TopicNames
    services: Pipeline
    apps: dict[str, Pipeline]
    tenants: list[Tenant]
    orgs: dict[str, str]  # tenant -> org id
    faults: list[str] = dataclasses.field(default_factory=list)

    def org_admin(self, method: str, tenant: str, path: str, body: dict[str, Any] | None = None) -> None:
        response = self.emulator.admin(method, f"/orgs/{self.orgs[tenant]}{path}", body)
        assert response.status_code < 300, response.text

    async def each_org(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        for tenant in self.orgs:
            await asyncio.to_thread(self.org_admin, method, tenant, path, body)


def app_database(tenant: str) -> str:
    return f"app_{tenant.replace('-', '_')}"


async def _database(postgres_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_with_database(postgres_dsn, name)


@asynccontextmanager
async def running(
    emulator: EmulatorProcess,
    kafka: KafkaServer,
    postgres: PostgresServer,
    names: TopicNames,
    dsn: str,
    state: Path,
) -> AsyncIterator[Run]:
    run_id = os.urandom(3).hex()
    tenants = [f"conv{i}-{run_id}" for i in range(TENANTS)]
    orgs: dict[str, str] = {}
    for tenant in tenants:
        response = emulator.admin("POST", "/orgs", org_spec(tenant))
        assert response.status_code == 201, response.text
        orgs[tenant] = response.json()["org_id"]
    documents = [tenant_document(t, emulator, f"{t}-client", cap) for t, cap in zip(tenants, CAPS, strict=True)]
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(d) for d in documents], "fault test")
    finally:
        await conn.close()
    config = PipelineConfig(
        state_dir=state,
        bootstrap_servers=kafka.bootstrap_servers,
        dsn=dsn,
        pubsub_target=emulator.grpc_target,
        ca_file=emulator.ca_cert,
        topic_prefix=names.prefix,
        secrets={secret_env(t): f"{t}-secret" for t in tenants},
        # Room for the test's bursts of edits; the daily caps above still bound every tenant.
        overrides={
            "rate-limit-governor": {"GOVERNOR_BURST": "2000"},
            **{
                name: {"TELEMETRY_LOG_LEVEL": os.environ.get("DUPLEX_FAULT_LOG_LEVEL", "INFO")}
                for name in ("cdc-ingest",)
            },
        },
    )
    services = Pipeline(config, specs=[s for s in SERVICES if s.name in SERVICE_NAMES])
    app_spec = [s for s in SERVICES if s.name == "partners-app"]
    apps: dict[str, Pipeline] = {}
    sides: list[Tenant] = []
    for tenant, cap in zip(tenants, CAPS, strict=True):
        app_dsn = await _database(postgres.dsn, app_database(tenant))
        apps[tenant] = Pipeline(
            dataclasses.replace(
                config,
                state_dir=state / tenant,
                app_tenant=tenant,
                app_dsn=app_dsn,
                overrides={"partners-app": {"PARTNERS_APP_GROUP_ID": f"partners-app-{tenant}"}},
            ),
            specs=app_spec,
        )
        crm = SalesforceSide(emulator, tenant)
        sides.append(Tenant(tenant, cap, crm, AppSide(app_dsn)))
    try:
        for side in sides:
            await side.crm.__aenter__()
            await side.app.migrate()
        yield Run(emulator, kafka, postgres, names, services, apps, sides, orgs)
    finally:
        for pipeline in (*apps.values(), services):
            await asyncio.to_thread(pipeline.stop)
        for side in sides:
            await side.crm.__aexit__()
        for org in orgs.values():
            emulator.admin("POST", f"/orgs/{org}/reset")
        conn = await asyncpg.connect(postgres.dsn)
        try:
            for tenant in tenants:
                await conn.execute(f'DROP DATABASE IF EXISTS "{app_database(tenant)}" WITH (FORCE)')
        finally:
            await conn.close()


async def converged(run: Run, what: str) -> list[str]:
    """Wait until every tenant's two sides hold what the test expects; returns the unordered fields."""
    deadline = time.monotonic() + CONVERGE_WITHIN
    problems: list[str] = []
    while time.monotonic() < deadline:
        checks = [await problems_of(t) for t in run.tenants]
        if any(found for found, _ in checks):
            delivered = await delivered_edits(run)
            checks = [await problems_of(t, delivered) for t in run.tenants]
        problems = [p for found, _ in checks for p in found]
        if not problems:
            return [u for _, unordered in checks for u in unordered]
        await asyncio.sleep(2)
    shown = "\n  ".join(problems[:20])
    counts = {t.value: await end_offsets(run, [t]) for t in (*PIPELINE_TOPICS, *DEAD_LETTERS)}
    raise AssertionError(
        f"{what}: {len(problems)} problems after {CONVERGE_WITHIN:.0f}s, e.g.\n  {shown}\n"
        f"events per topic: {counts}\ndead letters: {await dead_letters(run)}\n"
        f"service logs: {run.services.config.directory}\n"
        + "\n".join([await history(run, p) for p in [p for p in problems if " app=" in p][:3] or problems[:1]])
    )


async def history(run: Run, problem: str) -> str:
    """The sync log and mapped changes of the record a problem names: what Duplex was told and decided."""
    tenant = problem.split()[0].rstrip(":")
    # Record ids only: field values are printed as app='...' too.
    ids = [part.split("=", 1)[1] for part in problem.split() if part.startswith(("app=p-", "crm=0"))]
    conn = await asyncpg.connect(run.services.config.dsn)
    try:
        links = {
            r["link_id"]
            for r in await conn.fetch(
                "SELECT link_id FROM links WHERE tenant_id = $1"
                " AND (app_record_id = ANY($2::text[]) OR crm_record_id = ANY($2::text[]))",
                tenant,
                ids,
            )
        }
        rows = await conn.fetch(
            "SELECT at, service, event, code, message, detail FROM sync_log"
            " WHERE tenant_id = $1 AND (link_id = ANY($2::text[]) OR record_id = ANY($3::text[])) ORDER BY id",
            tenant,
            list(links),
            ids,
        )
    finally:
        await conn.close()
    decisions = [
        f"{r['at']:%H:%M:%S.%f} {r['service']} {r['event']} {r['code'] or ''} {r['message'] or ''} {r['detail']}"
        for r in rows
    ]
    changes = await trail(run, links)
    return (
        f"{tenant} {ids}, sync log:\n  "
        + "\n  ".join(decisions[-40:])
        + "\nmapped changes (origin commit time, side, kind, client, changed values):\n  "
        + "\n  ".join(changes[-40:])
    )


async def read_topic(run: Run, topic: Topic) -> list[ConsumerRecord[bytes, bytes]]:
    """Every event ``topic`` holds, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=run.kafka.bootstrap_servers, auto_offset_reset="earliest")
    name = run.names(topic)
    partitions = [TopicPartition(name, p) for p in range(run.names.table.topics[topic].partitions)]
    consumer.assign(partitions)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        ends = await consumer.end_offsets(partitions)
        while [p for p, end in ends.items() if await consumer.position(p) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


async def trail(run: Run, link_ids: set[str]) -> list[str]:
    """Every mapped change of these links, with its values: what the resolver was told, in order."""
    found = []
    for record in await read_topic(run, Topic.MAPPED_CHANGES):
        change = decode_event(change_mapped_pb2.ChangeMapped, record.value)
        if change.link_id in link_ids:
            values = {f.app_field: to_value(f.app_value) for f in change.fields if f.changed}
            side = record_changed_pb2.Side.Name(change.origin_side)
            kind = record_changed_pb2.ChangeKind.Name(change.kind)
            found.append(
                f"{change.origin_commit_time.ToDatetime():%H:%M:%S.%f} {side} {kind}"
                f" client={change.origin_client or '-'} {values}"
            )
    return found


async def dead_letters(run: Run) -> list[str]:
    """Why each dead letter was set aside."""
    return [
        f"{topic.value}: {dict(record.headers).get(ERROR_REASON, b'').decode()}"
        for topic in DEAD_LETTERS
        for record in await read_topic(run, topic)
    ]


Delivered = set[tuple[str, str, str, Any]]  # (tenant, record id, Salesforce field, value)


async def delivered_edits(run: Run) -> Delivered:
    """The Salesforce edits of the test's users whose change event reached crm-changes."""
    found: Delivered = set()
    for record in await read_topic(run, Topic.CRM_CHANGES):
        change = decode_event(record_changed_pb2.RecordChanged, record.value)
        if change.origin_client == REP_CLIENT:
            for name in change.changed_fields:
                if name in change.fields:
                    found.add((change.tenant_id, change.record_id, name, to_value(change.fields[name])))
    return found


async def problems_of(tenant: Tenant, delivered: Delivered | None = None) -> tuple[list[str], list[str]]:
    """Where ``tenant``'s two sides differ from what the test expects (none: converged).

    Returns the problems, and the fields that ended on another side's edit than the newest because
    a Salesforce edit of theirs never reached Duplex as a change event (``delivered``, when given,
    says which did): purging the org's events (replay expiry) drops those cdc-ingest had not read
    yet, and the record read back instead carries one modification time for all its fields, so
    newest-wins cannot order that edit against the app's. Such a field still has to agree on both
    sides and hold the last edit of one of them.
    """
    rows = await tenant.app.rows()
    accounts = await tenant.crm.accounts()
    tenant.link(rows)
    found: list[str] = []
    unordered: list[str] = []
    live = [r for r in tenant.records if not r.deleted]
    if len(rows) != len(live):
        found.append(f"{tenant.name}: {len(rows)} app rows for {len(live)} records")
    if len(accounts) != len(live):
        found.append(f"{tenant.name}: {len(accounts)} Accounts for {len(live)} records")
    for record in tenant.records:
        row = rows.get(record.app_id or "")
        account = accounts.get(record.crm_id or "")
        label = f"{tenant.name} {record.origin} record app={record.app_id} crm={record.crm_id}"
        if record.deleted:
            if row is not None or account is not None:
                found.append(f"{label}: deleted, still on {'app' if row else 'Salesforce'}")
            continue
        if row is None or account is None:
            found.append(f"{label}: missing on {'app' if row is None else 'Salesforce'}")
            continue
        for column, crm_field in FIELDS.items():
            want = record.expected[column]
            if row[column] == want and account[crm_field] == want:
                continue
            problem = f"{label}: {column} app={row[column]!r} crm={account[crm_field]!r} want={want!r}"
            lost = delivered is not None and any(
                side == "crm" and edited == column and (tenant.name, record.crm_id, crm_field, value) not in delivered
                for side, edited, value in record.edits
            )
            agreed = row[column] == account[crm_field]
            if lost and agreed and row[column] in (record.last("app", column), record.last("crm", column)):
                unordered.append(problem)
            else:
                found.append(problem)
    return found, unordered


async def end_offsets(run: Run, topics: list[Topic]) -> int:
    """How many events the topics hold in all (a sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=run.kafka.bootstrap_servers)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(run.names(t), p) for t in topics for p in range(run.names.table.topics[t].partitions)
        ]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def duplex_calls(run: Run, tenant: Tenant) -> int:
    usage = run.emulator.admin("GET", f"/orgs/{run.orgs[tenant.name]}/usage").json()
    return int(usage["by_client"].get(duplex_client(tenant.name), 0))


async def edit_until(stop: asyncio.Event, tenant: Tenant, rng: random.Random) -> None:
    """The tenant's users, on both sides, until the faults are over."""
    while not stop.is_set():
        if rng.random() < 0.04:
            await tenant.create_late(rng)
        else:
            await tenant.edit(rng)
        await asyncio.sleep(EDIT_INTERVAL)


async def faults(run: Run, rng: random.Random) -> None:
    """One fault after another, each followed by a while of normal running."""

    # DUPLEX_FAULTS=kill,kafka narrows the run to faults whose names contain one of the words
    # (to find which fault a failure needs); "none" keeps only the edits.
    chosen = [w.strip() for w in os.environ.get("DUPLEX_FAULTS", "").split(",") if w.strip()]

    async def step(name: str, action: Callable[[], Awaitable[None]]) -> None:
        if chosen and not any(word.lower() in name.lower() for word in chosen):
            await asyncio.sleep(SETTLE)
            return
        started = time.monotonic()
        await action()
        run.faults.append(name)
        print(f"fault: {name} ({time.monotonic() - started:.1f}s)", flush=True)
        await asyncio.sleep(SETTLE)

    for name in SERVICE_NAMES:

        async def crash(name: str = name) -> None:
            run.services.kill(name)
            await asyncio.sleep(1)
            await run.services.restart(name)

        await step(f"kill -9 {name}, restart", crash)
    await step("restart the Kafka broker", lambda: run.kafka.restart())
    await step("restart PostgreSQL", lambda: run.postgres.restart())

    async def outage() -> None:
        await run.each_org("PATCH", "/faults", {"unavailable_ratio": 0.25, "lock_ratio": 0.25, "seed": 11})
        await asyncio.sleep(SETTLE)
        await run.each_org("PATCH", "/faults", {"unavailable_ratio": 0, "lock_ratio": 0})

    await step("Salesforce: 25% 503s and 25% UNABLE_TO_LOCK_ROW", outage)
    await step("Salesforce: every token expired", lambda: run.each_org("POST", "/tokens/expire"))

    async def exhausted() -> None:
        for tenant in run.tenants:
            used = run.emulator.admin("GET", f"/orgs/{run.orgs[tenant.name]}/usage").json()["used"]
            await asyncio.to_thread(run.org_admin, "PATCH", tenant.name, "/faults", {"api_limit": used})
        await asyncio.sleep(SETTLE)
        await run.each_org("PATCH", "/faults", {"api_limit": None})

    await step("Salesforce: API limit exhausted", exhausted)

    async def gaps() -> None:
        for tenant in run.tenants:
            ids = [r.crm_id for r in rng.sample([r for r in tenant.records if r.editable], 3)]
            await asyncio.to_thread(
                run.org_admin, "POST", tenant.name, "/events/gap", {"entity": "Account", "record_ids": ids}
            )

    await step("CDC: gap events", gaps)

    async def replay_expired() -> None:
        await run.each_org("POST", "/events/purge", {"older_than_seconds": 0})
        await run.each_org("POST", "/streams/drop")

    await step("CDC: replay ids expired (events purged, streams dropped)", replay_expired)

    async def deletes() -> None:
        for tenant in run.tenants:
            for origin in ("app", "crm"):
                doomed = rng.choice([r for r in tenant.records if r.editable and r.origin == origin])
                await tenant.delete(doomed)

    await step("deletes on both sides", deletes)


async def test_every_record_converges_after_every_part_fails_in_turn(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("DUPLEX_FAULT_SEED", random.randrange(1 << 30)))
    print(f"\nfault test seed {seed} (DUPLEX_FAULT_SEED={seed} to repeat)", flush=True)
    rng = random.Random(seed)
    async with running(emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path) as run:
        await run.services.start()
        for app in run.apps.values():
            await app.start()

        # 1. Records on both sides, then the initial sync (backfill and live changes).
        for tenant in run.tenants:
            await tenant.seed(SEED_PER_SIDE)
        assert not await converged(run, "initial sync")

        # 2. Both sides edit while every part fails in turn.
        stop = asyncio.Event()
        editors = [asyncio.create_task(edit_until(stop, t, random.Random(rng.random()))) for t in run.tenants]
        try:
            await faults(run, rng)
        finally:
            stop.set()
            await asyncio.gather(*editors)
        crashed = [name for name, alive in run.services.status().items() if not alive]
        crashed += [f"partners-app of {t}" for t, app in run.apps.items() if not all(app.status().values())]
        assert not crashed, f"processes that exited during the faults: {crashed}"

        # 3. Convergence, then nothing more.
        started = time.monotonic()
        unordered = await converged(run, "convergence")
        converged_after = time.monotonic() - started
        writes = [Topic.CRM_WRITES, Topic.APP_UPDATES]
        before = await end_offsets(run, writes)
        await asyncio.sleep(10)
        after = await end_offsets(run, writes)
        assert after == before, f"still writing after convergence (echo loop?): {after - before} more writes"

        # 4. Budgets, counted by the emulator.
        for tenant in run.tenants:
            calls = duplex_calls(run, tenant)
            assert calls <= tenant.cap, f"{tenant.name}: {calls} API calls over its cap {tenant.cap}"

        records = sum(len(t.records) for t in run.tenants)
        print(
            f"faults: {len(run.faults)} ({', '.join(run.faults)})\n"
            f"tenants: {len(run.tenants)}; records checked: {records} "
            f"({sum(r.deleted for t in run.tenants for r in t.records)} deleted, "
            f"{sum(t.created_late for t in run.tenants)} created during the faults); "
            f"edits: {sum(t.edits for t in run.tenants)}; field values compared: {records * len(FIELDS) * 2}\n"
            f"converged {converged_after:.1f}s after the last fault; writes after convergence: {after - before}\n"
            f"fields edited on both sides whose Salesforce edit never came as an event (replay expiry),"
            f" agreed on the last edit of one side: {len(unordered)}\n"
            + "".join(f"  {u}\n" for u in unordered)
            + f"dead letters (each with its reason): {await dead_letters(run)}\n"
            + "\n".join(f"{t.name}: {duplex_calls(run, t)} API calls by Duplex, cap {t.cap}" for t in run.tenants),
            flush=True,
        )

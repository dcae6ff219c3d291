"""What the fault tests share: their run (orgs, tenants, services, apps), the checks, and the trails
they print when a record does not converge (see the tests' own docs for what they prove)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2

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
    ACCOUNT,
    REP_CLIENT,
    AppSide,
    CrmObject,
    SalesforceSide,
    Tenant,
    duplex_client,
    org_objects,
    secret_env,
    tenant_document,
)

# The sync path only: the admin API plays no part in convergence.
SERVICE_NAMES = [s.name for s in SERVICES if s.name not in ("partners-app", "admin")]
# The services that consume Kafka topics in a consumer group (replicas share its partitions).
CONSUMERS = ("mapping", "conflict-resolver", "writer")
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
    # Second replicas of the consumer services (one consumer group with ``services``' own), if any.
    replicas: Pipeline | None = None
    faults: list[str] = dataclasses.field(default_factory=list)

    def org_admin(self, method: str, tenant: str, path: str, body: dict[str, Any] | None = None) -> None:
        response = self.emulator.admin(method, f"/orgs/{self.orgs[tenant]}{path}", body)
        assert response.status_code < 300, response.text

    async def each_org(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        # One tenant of each org: tenants may share one.
        for tenant in {org: tenant for tenant, org in self.orgs.items()}.values():
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


@dataclasses.dataclass(frozen=True)
class TenantSpec:
    """One tenant of a run: its org (an alias; tenants may share one), daily cap and object."""

    name: str
    org: str
    cap: int
    crm: CrmObject = ACCOUNT


@asynccontextmanager
async def running(
    emulator: EmulatorProcess,
    kafka: KafkaServer,
    postgres: PostgresServer,
    names: TopicNames,
    dsn: str,
    state: Path,
    specs: list[TenantSpec],
    *,
    replicas: bool = False,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> AsyncIterator[Run]:
    """The orgs, the tenants' configurations and app databases, and the services (not started)."""
    orgs: dict[str, str] = {}
    for alias in dict.fromkeys(spec.org for spec in specs):
        org = org_spec(alias)
        org["objects"] |= org_objects([s.crm for s in specs if s.org == alias and s.crm is not ACCOUNT])
        response = emulator.admin("POST", "/orgs", org)
        assert response.status_code == 201, response.text
        orgs[alias] = response.json()["org_id"]
    documents = [tenant_document(s.name, emulator, f"{s.org}-client", s.cap, s.crm) for s in specs]
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
        secrets={secret_env(s.name): f"{s.org}-secret" for s in specs},
        # Room for the test's bursts of edits; the daily caps still bound every tenant.
        overrides={
            # A changed daily cap counts within a second.
            "rate-limit-governor": {"GOVERNOR_BURST": "2000", "GOVERNOR_CONFIG_TTL_SECONDS": "1"},
            "cdc-ingest": {"TELEMETRY_LOG_LEVEL": os.environ.get("DUPLEX_FAULT_LOG_LEVEL", "INFO")},
            **(overrides or {}),
        },
    )
    services = Pipeline(config, specs=[s for s in SERVICES if s.name in SERVICE_NAMES])
    second = None
    if replicas:
        second = Pipeline(
            dataclasses.replace(config, state_dir=state / "replicas", governor_target=services.governor_target),
            specs=[s for s in SERVICES if s.name in CONSUMERS],
        )
    app_spec = [s for s in SERVICES if s.name == "partners-app"]
    apps: dict[str, Pipeline] = {}
    sides: list[Tenant] = []
    for spec in specs:
        app_dsn = await _database(postgres.dsn, app_database(spec.name))
        apps[spec.name] = Pipeline(
            dataclasses.replace(
                config,
                state_dir=state / spec.name,
                app_tenant=spec.name,
                app_dsn=app_dsn,
                overrides={"partners-app": {"PARTNERS_APP_GROUP_ID": f"partners-app-{spec.name}"}},
            ),
            specs=app_spec,
        )
        sides.append(Tenant(spec.name, spec.cap, SalesforceSide(emulator, spec.org, spec.crm), AppSide(app_dsn)))
    try:
        for side in sides:
            await side.crm.__aenter__()
            await side.app.migrate()
        yield Run(emulator, kafka, postgres, names, services, apps, sides, {s.name: orgs[s.org] for s in specs}, second)
    finally:
        for pipeline in (*apps.values(), *([second] if second else []), services):
            await asyncio.to_thread(pipeline.stop)
        for side in sides:
            await side.crm.__aexit__()
        for org_id in orgs.values():
            emulator.admin("POST", f"/orgs/{org_id}/reset")
        conn = await asyncpg.connect(postgres.dsn)
        try:
            for spec in specs:
                await conn.execute(f'DROP DATABASE IF EXISTS "{app_database(spec.name)}" WITH (FORCE)')
        finally:
            await conn.close()


async def synced(run: Run, seed_per_side: int) -> None:
    """Every process up, ``seed_per_side`` records on each side of every tenant, and the initial sync done."""
    await run.services.start()
    if run.replicas is not None:
        await run.replicas.start()
    for app in run.apps.values():
        await app.start()
    for tenant in run.tenants:
        await tenant.seed(seed_per_side)
    assert not await converged(run, "initial sync")


async def converged(run: Run, what: str, within: float = 240.0) -> list[str]:
    """Wait until every tenant's two sides hold what the test expects; returns the unordered fields."""
    deadline = time.monotonic() + within
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
        f"{what}: {len(problems)} problems after {within:.0f}s, e.g.\n  {shown}\n"
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
        + "\nwrites to Salesforce (command, version, fields) and their outcomes:\n  "
        + "\n  ".join((await writes_of(run, links))[-40:])
    )


async def writes_of(run: Run, link_ids: set[str]) -> list[str]:
    """The crm-writes commands of these links and the writer's outcome of each."""
    found = []
    for record in await read_topic(run, Topic.CRM_WRITES):
        command = decode_event(write_records_pb2.WriteRecords, record.value)
        for write in command.records:
            if write.link_id in link_ids:
                fields = {name: to_value(value) for name, value in write.fields.items()}
                found.append(f"command {command.command_id[:8]} v{write.version} p{record.partition} {fields}")
    for record in await read_topic(run, Topic.WRITE_OUTCOMES):
        outcome = decode_event(write_settled_pb2.WriteSettled, record.value)
        if outcome.link_id in link_ids:
            status = write_settled_pb2.WriteStatus.Name(outcome.status)
            found.append(f"outcome {outcome.command_id[:8]} v{outcome.version} {status} attempts={outcome.attempts}")
    return found


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
    sides and hold the last edit of one of them; or, when the lost edit is the field's newest, one
    of the field's earlier edits (a write of it still on its way when the lost edit was made).
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
        for column, crm_field in tenant.fields.items():
            want = record.expected[column]
            if row[column] == want and account[crm_field] == want:
                continue
            problem = f"{label}: {column} app={row[column]!r} crm={account[crm_field]!r} want={want!r}"
            lost = delivered is not None and any(
                side == "crm" and edited == column and (tenant.name, record.crm_id, crm_field, value) not in delivered
                for side, edited, value in record.edits
            )
            agreed = row[column] == account[crm_field]
            # The newest edit is a Salesforce edit Duplex never heard of: a write of an earlier value
            # still on its way (held by an exhausted API limit, say) lands on top of it, and nothing
            # tells Duplex to undo that. Both sides must still agree on one of the field's edits.
            unheard = (
                delivered is not None
                and record.last("crm", column) == want
                and (tenant.name, record.crm_id, crm_field, want) not in delivered
                and row[column] in [v for _, c, v in record.edits if c == column]
            )
            if agreed and (
                (lost and row[column] in (record.last("app", column), record.last("crm", column))) or unheard
            ):
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


async def edit_until(stop: asyncio.Event, tenant: Tenant, rng: random.Random, interval: float) -> None:
    """The tenant's users, on both sides, until the faults are over."""
    while not stop.is_set():
        if rng.random() < 0.04:
            await tenant.create_late(rng)
        else:
            await tenant.edit(rng)
        await asyncio.sleep(interval)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Whether ``check()`` holds within ``within`` seconds (asked every half second)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False

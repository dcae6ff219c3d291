"""cdc-ingest's throughput and lag: Salesforce commit → RecordChanged acknowledged by Kafka.

A private emulator, a Kafka broker and a PostgreSQL server are started; cdc-ingest runs in this
process against them. First its first-connection backfill: 50,000 Accounts created before it
starts (sObject Collections) are read (by a Bulk 2.0 query job, over the threshold); records/s is
snapshots over the time from cdc-ingest's start to the broker's append of the last one, and the
API calls are the emulator's count for Duplex's client over the backfill. Then, the stream: once
the backfill is done, Accounts are created through
sObject Collections (200 per call, one transaction each). crm-changes is switched to broker
timestamps (``message.timestamp.type=LogAppendTime``), so a record's timestamp is when the broker
appended it, just before it acknowledged it (acks=all, one broker): for every change the lag is
that timestamp minus the change's origin commit time (the producer's send time would leave out
the batching linger and the broker round trip). Throughput is changes over the time from the first
commit to the last append. Every change written must arrive, or the run fails. Writer, emulator,
broker and cdc-ingest share this machine's cores.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from duplex.change.v1 import record_changed_pb2

from bench.report import Figure, Result
from bench.stack import bench_stack, configure_tenant, percentile
from devstack.emulator import API_VERSION, EmulatorProcess, start_emulator
from services.cdc_ingest.app import run as run_cdc_ingest
from services.cdc_ingest.app import unlimited_budgets
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.db import migrate
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config.policy import PolicySettings
from services.common.topic_admin import topic_configs
from services.common.topics import Topic, TopicNames

CHANGES = 10_000
BACKFILL = 50_000
# The tenant leaves callOptionsClient at its default: the emulator counts Duplex's calls under it.
DUPLEX_CLIENT = "duplex"
BATCH = 200
TENANT = "bench"
CONSUME_WITHIN_SECONDS = 600
# Kafka's record attribute for a timestamp set by the broker on append (0 is the producer's).
LOG_APPEND_TIME = 1


def _tenant(emulator: EmulatorProcess) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": TENANT},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "password",
                    "clientId": emulator.info["client_id"],
                    "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_BENCH_SF"}},
                    "username": emulator.info["username"],
                    "password": {"secretRef": {"env": "DUPLEX_SECRET_BENCH_SF_PASSWORD"}},
                },
                "dailyApiCap": 100_000,
            },
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "fields": [{"app": "name", "salesforce": "Name"}],
                }
            ],
        },
    }


async def _configure(dsn: str, emulator: EmulatorProcess) -> None:
    await migrate(dsn)
    await configure_tenant(dsn, _tenant(emulator))


async def _wait_until(dsn: str, holds: str, *args: object, seconds: float, what: str) -> None:
    """Until the query ``holds`` (a boolean, with ``args``) is true, asked every 0.1 s."""
    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(int(seconds * 10)):
            if await connection.fetchval(holds, *args):
                return
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    raise RuntimeError(f"cdc-ingest did not {what} within {seconds:.0f} s")


async def _wait_backfilled(dsn: str) -> None:
    await _wait_until(
        dsn, "SELECT count(*) > 0 FROM backfills WHERE status = 'done'", seconds=60, what="finish its backfill"
    )


async def _wait_streamed_past(dsn: str, commit_ms: int) -> None:
    """Until the stream's checkpoint is at or past ``commit_ms`` (it starts where the backfill
    began, less the overlap, and goes through the loaded records' events first)."""
    await _wait_until(
        dsn,
        "SELECT coalesce(max(commit_time) >= to_timestamp($1 / 1000.0), false) FROM replay_checkpoints",
        commit_ms,
        seconds=300,
        what="get its stream past the backfilled records",
    )


def _duplex_calls(emulator: EmulatorProcess) -> int:
    usage = emulator.admin("GET", f"/orgs/{emulator.info['org_id']}/usage").json()
    return int(usage["by_client"].get(DUPLEX_CLIENT, 0))


async def _write(emulator: EmulatorProcess, count: int, prefix: str) -> None:
    token = emulator.password_token()["access_token"]
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    headers = {"Authorization": f"Bearer {token}", "Sforce-Call-Options": "client=bench"}
    url = f"/services/data/v{API_VERSION}/composite/sobjects"
    async with httpx.AsyncClient(base_url=emulator.instance_url, verify=context, headers=headers, timeout=60) as client:
        for start in range(0, count, BATCH):
            records = [{"attributes": {"type": "Account"}, "Name": f"{prefix}{i}"} for i in range(start, start + BATCH)]
            response = await client.post(url, json={"allOrNone": True, "records": records})
            response.raise_for_status()


async def _stamp_on_append(bootstrap: str, names: TopicNames) -> str:
    """Make the broker stamp crm-changes' records as it appends them; the topic's name."""
    topic = names(Topic.CRM_CHANGES)
    # AlterConfigs replaces the topic's whole config: the table's settings go along.
    configs = topic_configs(names.table.topics[Topic.CRM_CHANGES]) | {"message.timestamp.type": "LogAppendTime"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()
    for response in responses:
        for error_code, message, *_ in response.resources:
            if error_code:
                raise RuntimeError(f"switching {topic} to LogAppendTime failed: {error_code} {message}")
    return topic


async def _consume(
    bootstrap: str, topic: str, expected: int, kind: record_changed_pb2.ChangeKind.ValueType, prefix: str
) -> list[tuple[int, int]]:
    """(origin commit ms, broker append ms) of every change of ``kind`` to an Account named ``prefix``…;
    fails unless all ``expected`` arrive."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + CONSUME_WITHIN_SECONDS
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.timestamp_type != LOG_APPEND_TIME:
                        # A producer timestamp would silently measure to the send, not the ack.
                        raise RuntimeError(f"{topic} record at offset {record.offset} has no broker timestamp")
                    change = record_changed_pb2.RecordChanged()
                    change.ParseFromString(record.value)
                    if change.kind == kind and change.fields["Name"].string_value.startswith(prefix):
                        # A retried send can append an event twice; its first append is when it was acked.
                        seen.setdefault(change.event_id, (change.origin_commit_time.ToMilliseconds(), record.timestamp))
    finally:
        await consumer.stop()
    if len(seen) < expected:
        raise RuntimeError(f"only {len(seen)} of {expected} changes reached {topic} within {CONSUME_WITHIN_SECONDS} s")
    return list(seen.values())


async def _run() -> Result:
    async with bench_stack("bench-cdc") as servers:
        emulator = start_emulator(servers.root / "emulator")
        try:
            names = servers.names
            await _configure(servers.dsn, emulator)
            topic = await _stamp_on_append(servers.bootstrap_servers, names)
            settings = CdcIngestSettings(
                kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=names.prefix),
                postgres=PostgresSettings(dsn=servers.dsn),
                pubsub_target=emulator.grpc_target,
                ca_file=emulator.ca_cert,
                lease_renew_seconds=1.0,
                # The emulator listens on 127.0.0.1, which only a development deployment may call.
                policy=PolicySettings(development=True),
            )
            environ = {
                "DUPLEX_SECRET_BENCH_SF": emulator.info["client_secret"],
                "DUPLEX_SECRET_BENCH_SF_PASSWORD": emulator.info["password"],
            }
            await _write(emulator, BACKFILL, "Backfill ")
            snapshots = asyncio.create_task(
                _consume(
                    servers.bootstrap_servers, topic, BACKFILL, record_changed_pb2.CHANGE_KIND_SNAPSHOT, "Backfill "
                )
            )
            calls_before = await asyncio.to_thread(_duplex_calls, emulator)
            started_ms = time.time() * 1000
            async with run_cdc_ingest(settings, environ=environ, budget_for=unlimited_budgets()):
                await _wait_backfilled(servers.dsn)
                backfill_calls = await asyncio.to_thread(_duplex_calls, emulator) - calls_before
                backfilled = await snapshots
                await _wait_streamed_past(servers.dsn, max(committed for committed, _ in backfilled))
                caught_up_ms = time.time() * 1000
                consumer = asyncio.create_task(
                    _consume(servers.bootstrap_servers, topic, CHANGES, record_changed_pb2.CHANGE_KIND_CREATE, "Bench ")
                )
                await _write(emulator, CHANGES, "Bench ")
                pairs = await consumer
        finally:
            emulator.stop()
    backfill_span = (max(acked for _, acked in backfilled) - started_ms) / 1000
    lags = [(acked - committed) / 1000 for committed, acked in pairs]
    span = (max(acked for _, acked in pairs) - min(committed for committed, _ in pairs)) / 1000
    return Result(
        "cdc-ingest",
        {
            "backfill": f"{BACKFILL:,} Accounts",
            "changes": CHANGES,
            "writes": f"sObject Collections, {BATCH} per call",
            "delivered": len(pairs),
        },
        [
            Figure("backfill, start → last snapshot acked (records/s)", BACKFILL / backfill_span, "records/s", 10_000),
            Figure(
                "backfill: Duplex's API calls per 50,000 records",
                backfill_calls / BACKFILL * 50_000,
                "calls",
                10,
                False,
            ),
            Figure(
                "stream past the loaded records' events, start → checkpoint (s)",
                (caught_up_ms - started_ms) / 1000,
                "s",
            ),
            Figure("ingest throughput, commit → Kafka ack (events/s)", len(pairs) / span, "events/s"),
            Figure("lag p50 (commit → Kafka ack)", statistics.median(lags), "s"),
            Figure("lag p99 (commit → Kafka ack)", percentile(lags, 0.99), "s"),
        ],
    )


def run() -> Result:
    return asyncio.run(_run())

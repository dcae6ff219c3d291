"""The writer: records/s written to Salesforce, API calls per 1,000 records, p99 write latency.

A private emulator, Kafka broker and PostgreSQL; the writer runs in this process. One-record
upsert commands (as the conflict-resolver sends them) are published to crm-writes as fast as
possible; every command's WriteSettled is awaited. API calls are the emulator's own count. Write
latency is each outcome's settled_at minus its command's origin commit time (stamped at publish).
Three runs: REST (sObject Collections) with commands arriving while the writer runs, REST with a
backlog waiting when it starts, and Bulk API 2.0 (forced) with a backlog.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from duplex.writer.v1 import write_records_pb2, write_settled_pb2

from bench.report import Figure, Result
from bench.stack import BenchStack, bench_stack, percentile
from devstack.emulator import API_VERSION, EmulatorProcess, start_emulator
from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.salesforce import UnlimitedBudget, env_secrets
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.tenant_config.policy import PolicySettings
from services.common.topics import Topic
from services.writer.app import run as run_writer
from services.writer.settings import WriterSettings

RECORDS = 20_000


def _tenant(name: str, emulator: EmulatorProcess, ingestion: str) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "client_credentials",
                    "clientId": emulator.info["client_id"],
                    "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_BENCH_SF"}},
                },
                "dailyApiCap": 1_000_000,
            },
            "sync": {"backfill": {"ingestion": ingestion}},
        },
    }


def _command(tenant: str, link: str) -> write_records_pb2.WriteRecords:
    message = write_records_pb2.WriteRecords(
        command_id=uuid.uuid4().hex,
        tenant_id=tenant,
        crm_object="Account",
        operation=write_records_pb2.OPERATION_UPSERT,
        external_id_field="Duplex_Id__c",
        priority=write_records_pb2.PRIORITY_LIVE,
    )
    record = message.records.add(link_id=link, external_id_value=link, version=1)
    record.fields["Name"].string_value = f"Bench {link}"
    message.origin_commit_time.GetCurrentTime()
    return message


def _api_used(emulator: EmulatorProcess) -> int:
    return int(emulator.admin("GET", f"/orgs/{emulator.info['org_id']}").json()["api_usage"]["used"])


async def _one_run(
    servers: BenchStack, emulator: EmulatorProcess, ingestion: str, *, backlog: bool
) -> tuple[float, float, float]:
    """(records/s, API calls per 1,000 records, p99 latency in s) for one ingestion mode.

    ``backlog``: every command waits in crm-writes before the writer starts (catching up after an
    outage); otherwise commands arrive while it runs (live traffic at the publisher's pace).
    """
    tenant = f"bench-{ingestion}-{'backlog' if backlog else 'live'}"
    conn = await asyncpg.connect(servers.dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(_tenant(tenant, emulator, ingestion))], "bench")
    finally:
        await conn.close()
    settings = WriterSettings(
        kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=servers.names.prefix),
        postgres=PostgresSettings(dsn=servers.dsn),
        salesforce_ca_file=emulator.ca_cert,
        service_name=f"writer-{tenant}",
        # The emulator listens on 127.0.0.1, which only a development deployment may call.
        policy=PolicySettings(development=True),
    )
    secrets = env_secrets({"DUPLEX_SECRET_BENCH_SF": emulator.info["client_secret"]})
    outcomes = AIOKafkaConsumer(
        servers.names(Topic.WRITE_OUTCOMES), bootstrap_servers=servers.bootstrap_servers, auto_offset_reset="latest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=servers.bootstrap_servers, acks="all", linger_ms=5)
    await outcomes.start()
    await producer.start()
    topic = servers.names(Topic.CRM_WRITES)

    async def publish() -> None:
        sent = [
            await producer.send(topic, _command(tenant, link).SerializeToString(), key=f"{tenant}/{link}".encode())
            for link in (f"{tenant}-{uuid.uuid4().hex}" for _ in range(RECORDS))
        ]
        await asyncio.gather(*sent)

    try:
        if backlog:
            await publish()
        before = await asyncio.to_thread(_api_used, emulator)
        started = time.perf_counter()
        async with run_writer(settings, secrets=secrets, budget=UnlimitedBudget()):
            if not backlog:
                await publish()
            latencies: list[float] = []
            async with asyncio.timeout(900):
                while len(latencies) < RECORDS:
                    for records in (await outcomes.getmany(timeout_ms=500)).values():
                        for record in records:
                            settled = write_settled_pb2.WriteSettled.FromString(record.value or b"")
                            if settled.tenant_id == tenant:
                                delay = settled.settled_at.ToDatetime() - settled.origin_commit_time.ToDatetime()
                                latencies.append(delay.total_seconds())
            elapsed = time.perf_counter() - started
            calls = await asyncio.to_thread(_api_used, emulator) - before
    finally:
        await producer.stop()
        await outcomes.stop()
    return RECORDS / elapsed, calls * 1000 / RECORDS, percentile(latencies, 0.99)


async def _run() -> Result:
    async with bench_stack("bench-writer") as servers:
        await migrate(servers.dsn)
        emulator = start_emulator(servers.root / "emulator")
        try:
            live = await _one_run(servers, emulator, "rest", backlog=False)
            rest = await _one_run(servers, emulator, "rest", backlog=True)
            bulk = await _one_run(servers, emulator, "bulk", backlog=True)
        finally:
            emulator.stop()
    return Result(
        "writer",
        {"records": RECORDS, "commands": "one-record upserts", "budget": "unlimited (calls counted by the emulator)"},
        [
            Figure("REST, live: written (records/s)", live[0], "records/s"),
            Figure("REST, live: API calls per 1,000 records", live[1], "calls", target=5.1, higher_is_better=False),
            Figure("REST, live: write latency p99", live[2], "s"),
            Figure("REST, backlog: written (records/s)", rest[0], "records/s"),
            Figure("REST, backlog: API calls per 1,000 records", rest[1], "calls", target=5.1, higher_is_better=False),
            Figure("Bulk 2.0, backlog: written (records/s)", bulk[0], "records/s"),
            Figure("Bulk 2.0, backlog: API calls per 1,000 records", bulk[1], "calls"),
        ],
    )


def run() -> Result:
    return asyncio.run(_run())

"""The writer against the emulator, a real Kafka broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from duplex.writer.v1 import write_records_pb2

from devstack.emulator import API_VERSION, EmulatorProcess
from services.common.dlq import ORIGINAL_TOPIC
from services.common.metrics import Metrics
from services.common.salesforce import UnlimitedBudget
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames
from services.writer.app import run
from services.writer.settle import ERROR_CODE_HEADER
from tests.integration.writer.harness import (
    REJECTED,
    SUCCEEDED,
    TopicReader,
    WriteSettled,
    api_used,
    command,
    committed_total,
    count_accounts,
    outcomes,
    prepare_database,
    resolver,
    send,
    soql,
    tenant_document,
    upstream,
    writer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TENANT = "acme-writer"


@dataclass
class Stack:
    bootstrap: str
    names: TopicNames
    dsn: str
    emulator: EmulatorProcess
    group: str = ""

    @asynccontextmanager
    async def writer(
        self, ingestion: str = "rest", api_version: str = API_VERSION, **overrides: Any
    ) -> AsyncIterator[tuple[Metrics, UnlimitedBudget]]:
        """A writer running against the stack: its metrics, and its (unlimited, counting) budget."""
        await prepare_database_once(self, ingestion, api_version)
        budget = UnlimitedBudget()
        # A consumer group per test: no test waits for another test's members to leave.
        overrides.setdefault("service_name", f"writer-{uuid.uuid4().hex[:8]}")
        settings = writer_settings(self.bootstrap, self.names, self.dsn, self.emulator, **overrides)
        self.group = f"{self.names.prefix}{settings.service_name}"
        telemetry = setup_telemetry(TelemetrySettings(), service_name=settings.service_name, install_global=False)
        async with run(settings, telemetry, secrets=resolver(self.emulator, {TENANT: "acme"}), budget=budget) as writer:
            # Ready as soon as it runs: the database and the Kafka cluster answer.
            assert await writer.health.is_ready()
            yield telemetry.metrics, budget


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample of the writer's metrics (0 when it was never recorded)."""
    return metrics.registry.get_sample_value(name, {"tenant": TENANT, **labels}) or 0.0


async def prepare_database_once(stack: Stack, ingestion: str, api_version: str = API_VERSION) -> None:
    document = tenant_document(TENANT, stack.emulator, ingestion=ingestion, api_version=api_version)
    await prepare_database(stack.dsn, [document])


@pytest.fixture
def stack(kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess) -> Stack:
    return Stack(kafka_bootstrap, topic_names, fresh_database, emulator)


def prefix() -> str:
    return f"w{uuid.uuid4().hex[:8]}-"


async def write_many(stack: Stack, run: str, total: int, per_command: int) -> int:
    commands = [
        command(TENANT, [(f"{run}{n}", {"Name": f"Account {n}"}) for n in range(start, start + per_command)])
        for start in range(0, total, per_command)
    ]
    async with upstream(stack.bootstrap) as broker:
        return await send(broker, stack.names, commands)


async def sync_log(dsn: str, event: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM sync_log WHERE event = $1 ORDER BY id", event)
    finally:
        await conn.close()
    return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]


async def test_ten_thousand_records_take_at_most_51_calls_over_rest(stack: Stack) -> None:
    run = prefix()
    before = api_used(stack.emulator)
    async with (
        # A quiet period of 500 ms (not the default 200) closes a part-full batch: on two busy
        # cores, taking commands from Kafka can stall for longer than 200 ms.
        stack.writer("rest", batch_window_ms=500) as (_, budget),
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
    ):
        # One record per command, as the conflict-resolver sends them.
        sent = await write_many(stack, run, 10_000, 1)
        await reader.until(lambda: len(reader.records) >= 10_000, within=180, what="10,000 outcomes")
        calls = api_used(stack.emulator) - before
        await _committed(stack, sent)

    settled = outcomes(reader)
    assert len(settled) == 10_000
    assert {s.status for s in settled} == {SUCCEEDED}
    assert all(s.created and s.record_id.startswith("001") for s in settled)
    print(f"10,000 records over REST: {calls} API calls")  # the figure, for the report (-s)
    assert calls <= 51, calls
    assert budget.calls[TENANT] == calls
    assert count_accounts(stack.emulator, run) == 10_000
    logged = await sync_log(stack.dsn, "write.succeeded")
    assert sum(row["detail"]["count"] for row in logged) == 10_000


async def test_bulk_forced_takes_far_fewer_calls(stack: Stack) -> None:
    run = prefix()
    before = api_used(stack.emulator)
    async with (
        stack.writer("bulk", batch_window_ms=3000) as _,
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
    ):
        await write_many(stack, run, 10_000, 500)
        await reader.until(lambda: len(reader.records) >= 10_000, within=180, what="10,000 outcomes")
        calls = api_used(stack.emulator) - before

    assert {s.status for s in outcomes(reader)} == {SUCCEEDED}
    print(f"10,000 records over Bulk 2.0: {calls} API calls")
    assert calls <= 15, calls
    assert count_accounts(stack.emulator, run) == 10_000


async def test_ten_updates_to_one_record_in_one_window_cost_one_call(stack: Stack) -> None:
    link = f"{prefix()}one"
    async with (
        stack.writer("rest", batch_window_ms=1500) as (metrics, budget),
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
    ):
        async with upstream(stack.bootstrap) as broker:
            await send(
                broker, stack.names, [command(TENANT, [(link, {"Name": f"v{n}"})], version=n) for n in range(10)]
            )
        await reader.until(lambda: len(reader.records) >= 10, within=30, what="10 outcomes")

    settled = outcomes(reader)
    assert len({s.command_id for s in settled}) == 10
    assert {s.status for s in settled} == {SUCCEEDED}
    assert len({s.record_id for s in settled}) == 1
    assert budget.calls[TENANT] == 1
    assert sample(metrics, "duplex_api_calls_total", api="composite", priority="live") == 1
    # Every command folded into the one write reached Salesforce: ten latencies, origin → written.
    assert sample(metrics, "duplex_end_to_end_latency_seconds_count", stage="written") == 10
    rows = soql(stack.emulator, f"SELECT Name FROM Account WHERE Duplex_Id__c = '{link}'")["records"]
    assert [r["Name"] for r in rows] == ["v9"]


async def test_a_tenant_pinned_to_api_version_68_writes_through_it(stack: Stack) -> None:
    """apiVersion "68.0" (Winter '27) is a valid tenant, and its writes reach Salesforce at that version
    (before the emulator served every current version, 68.0 was a 404 and the write was rejected)."""
    link = f"{prefix()}v68"
    async with (
        stack.writer("rest", api_version="68.0") as (metrics, budget),
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
    ):
        async with upstream(stack.bootstrap) as broker:
            await send(broker, stack.names, [command(TENANT, [(link, {"Name": "Winter '27"})])])
        await reader.until(lambda: len(reader.records) >= 1, within=30, what="1 outcome")

    (settled,) = outcomes(reader)
    assert (settled.status, settled.created) == (SUCCEEDED, True)
    assert budget.calls[TENANT] == 1
    assert sample(metrics, "duplex_api_calls_total", api="composite", priority="live") == 1
    rows = soql(stack.emulator, f"SELECT Id, Name FROM Account WHERE Duplex_Id__c = '{link}'")["records"]
    assert [(r["Id"], r["Name"]) for r in rows] == [(settled.record_id, "Winter '27")]


async def test_permanent_failures_are_rejected_per_record_while_the_rest_succeeds(stack: Stack) -> None:
    run = prefix()
    async with (
        stack.writer("rest", batch_window_ms=800) as (metrics, _),
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
        TopicReader(stack.bootstrap, stack.names, Topic.CRM_WRITES_DLQ) as dead,
        upstream(stack.bootstrap) as broker,
    ):
        # Two records to update afterwards: one will be given the other's unique external id.
        await send(broker, stack.names, [command(TENANT, [(f"{run}a", {"Name": "A"}), (f"{run}b", {"Name": "B"})])])
        await reader.until(lambda: len(reader.records) >= 2, within=30, what="setup")
        ids = {s.link_id: s.record_id for s in outcomes(reader)}

        upserts = command(
            TENANT,
            [
                (f"{run}good1", {"Name": "Good 1"}),
                (f"{run}missing", {"Phone": "1"}),
                (f"{run}unknown", {"Name": "X", "No_Such_Field__c": "x"}),
                (f"{run}readonly", {"Name": "X", "AnnualRevenue": 5}),
                (f"{run}long", {"Name": "x" * 300}),
                (f"{run}good2", {"Name": "Good 2"}),
            ],
        )
        updates = command(
            TENANT,
            [(f"{run}a", {"Phone": "42"}), (f"{run}b", {"Duplex_Id__c": f"{run}a"}), (f"{run}bad", {"Phone": "1"})],
            operation=write_records_pb2.OPERATION_UPDATE,
            record_ids={f"{run}a": ids[f"{run}a"], f"{run}b": ids[f"{run}b"], f"{run}bad": "001NOTANID"},
            # Newer than the creates' version: a version already applied to a link is not sent again.
            version=2,
        )
        await send(broker, stack.names, [upserts, updates])
        await reader.until(lambda: len(reader.records) >= 11, within=60, what="9 outcomes")
        await dead.until(lambda: len(dead.records) >= 6, within=30, what="6 dead letters")

    by_link: dict[str, WriteSettled] = {s.link_id.removeprefix(run): s for s in outcomes(reader)[2:]}
    expected = {
        "missing": "REQUIRED_FIELD_MISSING",
        "unknown": "INVALID_FIELD",
        "readonly": "INSUFFICIENT_ACCESS_OR_READONLY",
        "long": "STRING_TOO_LONG",
        "b": "DUPLICATE_VALUE",
        "bad": "MALFORMED_ID",
    }
    for link, code in expected.items():
        assert by_link[link].status == REJECTED, link
        assert by_link[link].errors[0].status_code == code, link
    for link in ("good1", "good2", "a"):
        assert by_link[link].status == SUCCEEDED, link
    logged = {row["link_id"].removeprefix(run): row["code"] for row in await sync_log(stack.dsn, "write.rejected")}
    assert logged == expected
    dead_codes = {}
    for record in dead.records:
        headers = {k: v.decode() for k, v in record.headers}
        replay = write_records_pb2.WriteRecords()
        replay.ParseFromString(record.value)
        assert headers[ORIGINAL_TOPIC] == stack.names(Topic.CRM_WRITES)
        assert len(replay.records) == 1
        dead_codes[replay.records[0].link_id.removeprefix(run)] = headers[ERROR_CODE_HEADER]
    assert dead_codes == expected
    assert count_accounts(stack.emulator, run) == 4  # a, b, good1, good2
    # Latency is observed for the writes that succeeded (a twice, b, good1, good2), never for rejections.
    succeeded = sum(1 for s in outcomes(reader) if s.status == SUCCEEDED)
    assert succeeded == 5
    assert sample(metrics, "duplex_end_to_end_latency_seconds_count", stage="written") == succeeded


async def test_locks_and_outages_are_retried_to_success(stack: Stack, faults: EmulatorProcess) -> None:
    run = prefix()
    org = faults.info["org_id"]
    faults.admin("PATCH", f"/orgs/{org}/faults", {"lock_ratio": 0.2, "unavailable_ratio": 0.3, "seed": 7})
    async with (
        stack.writer("rest", batch_window_ms=200) as _,
        TopicReader(stack.bootstrap, stack.names, Topic.WRITE_OUTCOMES) as reader,
    ):
        await write_many(stack, run, 1000, 50)
        await reader.until(lambda: len(reader.records) >= 1000, within=120, what="1,000 outcomes")

    settled = outcomes(reader)
    assert {s.status for s in settled} == {SUCCEEDED}
    assert max(s.attempts for s in settled) > 1
    faults.admin("PATCH", f"/orgs/{org}/faults", {"lock_ratio": 0, "unavailable_ratio": 0})
    assert count_accounts(faults, run) == 1000


async def _committed(stack: Stack, sent: int) -> None:
    topic = stack.names(Topic.CRM_WRITES)
    for _ in range(50):
        if await committed_total(stack.bootstrap, stack.group, topic) == sent:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"committed {await committed_total(stack.bootstrap, stack.group, topic)} of {sent}")

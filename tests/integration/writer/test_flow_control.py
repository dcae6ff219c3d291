"""Per-tenant flow control: a tenant without API budget never holds the shared partitions.

Tenant "stuck" has no budget at all while 10,000 of its writes arrive (100,000 under ``-m slow``):
they are parked in PostgreSQL, the consumer group's committed offsets reach the end of crm-writes
although not one of them is written, and tenant "busy" bursts through as fast as it does alone.
When stuck's budget returns, every parked write lands, in order, and the park is empty again.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devstack.emulator import EmulatorProcess
from services.common.db import create_pool, migrate
from services.common.governor_client import BudgetUnavailable
from services.common.salesforce import UnlimitedBudget
from services.common.settings import PostgresSettings
from services.common.topics import Topic, TopicNames
from services.writer.app import run as run_writer
from services.writer.commands import Delivery
from services.writer.repository import PostgresParkStore
from tests.integration.writer.harness import (
    SUCCEEDED,
    TopicReader,
    WriteRecords,
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

pytestmark = [pytest.mark.integration]

BURST = 2_000
MAX_PENDING = 2_000


class Budget(UnlimitedBudget):
    """The governor's answer: no budget at all for the ``closed`` tenants (asked again a second later)."""

    def __init__(self, closed: set[str]) -> None:
        super().__init__()
        self.closed = closed

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        if tenant_id in self.closed:
            raise BudgetUnavailable(tenant_id, datetime.now(UTC) + timedelta(seconds=1), "daily cap reached")
        await super().acquire(tenant_id, calls, backfill=backfill)


def writes(tenant: str, tag: str, count: int) -> list[WriteRecords]:
    return [command(tenant, [(f"{tag}{n:06d}", {"Name": f"{tenant} {n}"})]) for n in range(count)]


async def parked(dsn: str, tenant: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM writer_parked_commands WHERE tenant_id = $1", tenant))
    finally:
        await conn.close()


async def burst(reader: TopicReader, broker: object, names: TopicNames, tenant: str, tag: str) -> float:
    """Seconds from publishing BURST writes of ``tenant`` to the last one's outcome."""
    commands = writes(tenant, tag, BURST)
    wanted = {c.command_id for c in commands}
    started = time.monotonic()
    await send(broker, names, commands)  # type: ignore[arg-type]
    await reader.until(
        lambda: wanted <= {o.command_id for o in outcomes(reader) if o.status == SUCCEEDED},
        within=120,
        what=f"{tenant}'s burst",
    )
    return time.monotonic() - started


@pytest.mark.timeout(60)
async def test_parked_commands_keep_everything_the_consumed_record_had(fresh_database: str) -> None:
    await migrate(fresh_database)
    async with create_pool(PostgresSettings(dsn=fresh_database)) as pool:
        store = PostgresParkStore(pool)
        first = Delivery("1", "c1", "acme", ("w", 3), 5, False, None, b"key", (("h", b"\x00\xff"),), 1700, b"one")
        second = Delivery("2", "c2", "acme", ("w", 3), 6, False, None, None, (), None, b"two")
        other = Delivery("3", "c3", "globex", ("w", 4), 1, False, None, None, (), None, b"three")
        ids = await store.park([(first, "overflow"), (second, "held"), (other, "overflow")])

        rows = await store.load("acme", ("w", 3), 0, 10)
        assert [r.id for r in rows] == ids[:2]
        assert (rows[0].offset, rows[0].key, rows[0].headers, rows[0].timestamp_ms, rows[0].command) == (
            5,
            b"key",
            (("h", b"\x00\xff"),),
            1700,
            b"one",
        )
        assert [r.command for r in await store.load("acme", ("w", 3), ids[0], 10)] == [b"two"]
        assert await store.parked_tenants([("w", 3), ("w", 4), ("w", 5)]) == {"acme": {("w", 3)}, "globex": {("w", 4)}}


@pytest.mark.parametrize(
    "queued",
    [
        pytest.param(10_000, marks=pytest.mark.timeout(300)),
        pytest.param(100_000, marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
    ],
)
async def test_a_tenant_without_budget_is_parked_and_never_slows_or_pins_another(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess, queued: int
) -> None:
    await prepare_database(
        fresh_database,
        [tenant_document("stuck", emulator, org="acme"), tenant_document("busy", emulator, org="globex")],
    )
    run = uuid.uuid4().hex[:8]
    budget = Budget(closed={"stuck"})
    settings = writer_settings(
        kafka_bootstrap,
        topic_names,
        fresh_database,
        emulator,
        service_name=f"writer-{run}",
        max_pending_per_tenant=MAX_PENDING,
        park_after_seconds=1.0,
    )
    topic = topic_names(Topic.CRM_WRITES)
    stuck = writes("stuck", f"s{run}-", queued)
    async with (
        run_writer(settings, secrets=resolver(emulator, {"stuck": "acme", "busy": "globex"}), budget=budget),
        TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
        upstream(kafka_bootstrap) as broker,
    ):
        alone = await burst(reader, broker, topic_names, "busy", f"a{run}-")

        await send(broker, topic_names, stuck)
        deadline = time.monotonic() + (60 if queued <= 10_000 else 600)
        # Every offset is committed although not one of stuck's writes was made: they are parked.
        group = f"{topic_names.prefix}{settings.service_name}"
        while await committed_total(kafka_bootstrap, group, topic) < BURST + queued:
            assert time.monotonic() < deadline, "stuck's commands hold the partitions"
            await reader.poll()
        assert await parked(fresh_database, "stuck") == queued
        assert budget.calls.get("stuck", 0) == 0

        beside = await burst(reader, broker, topic_names, "busy", f"b{run}-")
        print(f"busy's {BURST} writes: {alone:.2f} s alone, {beside:.2f} s beside {queued} parked writes")
        # The figure with a 10 % target is `make bench`'s; a loaded test machine gets slack.
        assert beside < alone * 1.5 + 2, (alone, beside)

        budget.closed.clear()
        wanted = {c.command_id for c in stuck}
        await reader.until(
            lambda: wanted <= {o.command_id for o in outcomes(reader) if o.status == SUCCEEDED},
            within=120 if queued <= 10_000 else 900,
            what="every parked write",
        )
        assert await parked(fresh_database, "stuck") == 0

    assert count_accounts(emulator, f"s{run}-") == queued
    last = soql(emulator, f"SELECT Name FROM Account WHERE Duplex_Id__c = 's{run}-{queued - 1:06d}'")["records"]
    assert [r["Name"] for r in last] == [f"stuck {queued - 1}"]

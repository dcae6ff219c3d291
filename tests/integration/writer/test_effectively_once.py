"""Effectively once for every write kind: answers lost after a commit, duplicates and replays.

The emulator's ``ambiguous_commit_ratio`` fault applies a write and then loses its answer (a 503
or a dropped connection), so the writer cannot tell it from a write that never happened and
sends it again. A duplicate delivery or a replay after a crash is the same command published to
crm-writes again: the writer must see it as a new delivery of a version it already applied.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from duplex.writer.v1 import write_records_pb2

from devstack.emulator import EmulatorProcess
from services.common.metrics import Metrics
from services.common.salesforce import UnlimitedBudget
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames
from services.common.values import Value
from services.salesforce_emulator.faults import OrgFaults
from services.writer.app import run
from tests.integration.writer.harness import (
    SUCCEEDED,
    SUPERSEDED,
    TopicReader,
    WriteRecords,
    WriteSettled,
    api_used,
    command,
    count_accounts,
    outcomes,
    prepare_database,
    resolver,
    salesforce,
    send,
    soql,
    tenant_document,
    upstream,
    writer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TENANT = "acme-once"
UPDATE = write_records_pb2.OPERATION_UPDATE
DELETE = write_records_pb2.OPERATION_DELETE
RATIO = 0.5


def losing_first_answer() -> int:
    """A seed whose first write call after a reseed loses its answer and whose second does not,
    so that every phase of a test meets the fault at least once and still moves on."""
    faults = OrgFaults(ambiguous_commit_ratio=RATIO)
    for seed in range(1000):
        faults.reseed(seed)
        if faults.next_commit_ambiguous() and not faults.next_commit_ambiguous():
            return seed
    raise AssertionError("no such seed")


@pytest.fixture
def ambiguous(emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The emulator, the default org's ambiguous commits turned off again after the test."""
    yield emulator
    set_faults(emulator, ambiguous_commit_ratio=0.0, ambiguous_commit_mode="unavailable")


def set_faults(emulator: EmulatorProcess, **faults: Any) -> None:
    emulator.admin("PATCH", f"/orgs/{emulator.info['org_id']}/faults", faults)


@asynccontextmanager
async def writing(
    bootstrap: str, names: TopicNames, dsn: str, emulator: EmulatorProcess
) -> AsyncIterator[tuple[Metrics, TopicReader]]:
    """A writer for TENANT, with its metrics and a reader of its outcomes."""
    await prepare_database(dsn, [tenant_document(TENANT, emulator)])
    settings = writer_settings(bootstrap, names, dsn, emulator, service_name=f"writer-{uuid.uuid4().hex[:8]}")
    telemetry = setup_telemetry(TelemetrySettings(), service_name=settings.service_name, install_global=False)
    secrets = resolver(emulator, {TENANT: "acme"})
    async with (
        run(settings, telemetry, secrets=secrets, budget=UnlimitedBudget()),
        TopicReader(bootstrap, names, Topic.WRITE_OUTCOMES) as reader,
    ):
        yield telemetry.metrics, reader


async def publish(bootstrap: str, names: TopicNames, *commands: WriteRecords) -> None:
    async with upstream(bootstrap) as broker:
        await send(broker, names, commands)


async def settle(reader: TopicReader, count: int) -> list[WriteSettled]:
    """The next ``count`` outcomes (waiting for them)."""
    start = len(reader.records)
    await reader.until(lambda: len(reader.records) >= start + count, within=90, what=f"{count} more outcomes")
    return outcomes(reader)[start:]


def one(
    link: str,
    fields: dict[str, Value],
    version: int,
    *,
    operation: int = write_records_pb2.OPERATION_UPSERT,
    id: str = "",
) -> WriteRecords:
    return command(
        TENANT, [(link, fields)], operation=operation, version=version, record_ids={link: id} if id else None
    )


def account(emulator: EmulatorProcess, record_id: str) -> dict[str, Any]:
    body: dict[str, Any] = salesforce(emulator, "GET", f"/sobjects/Account/{record_id}").json()
    return body


def run_prefix() -> str:
    return f"e{uuid.uuid4().hex[:8]}-"


# ----------------------------------------------------------------------------- ambiguous commits


@pytest.mark.parametrize("mode", ["unavailable", "disconnect"])
async def test_creates_updates_and_deletes_whose_answers_are_lost_land_exactly_once(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, ambiguous: EmulatorProcess, mode: str
) -> None:
    emulator, run, seed = ambiguous, run_prefix(), losing_first_answer()
    links = [f"{run}{n}" for n in range(20)]
    async with writing(kafka_bootstrap, topic_names, fresh_database, emulator) as (_, reader):
        set_faults(emulator, ambiguous_commit_ratio=RATIO, ambiguous_commit_mode=mode, seed=seed)
        await publish(kafka_bootstrap, topic_names, *(one(link, {"Name": "created"}, 1) for link in links))
        created = await settle(reader, len(links))
        ids = {s.link_id: s.record_id for s in created}

        set_faults(emulator, seed=seed)
        await publish(
            kafka_bootstrap,
            topic_names,
            *(one(link, {"Name": "updated"}, 2, operation=UPDATE, id=ids[link]) for link in links),
        )
        updated = await settle(reader, len(links))

        set_faults(emulator, seed=seed)
        doomed = links[::2]
        await publish(
            kafka_bootstrap, topic_names, *(one(link, {}, 3, operation=DELETE, id=ids[link]) for link in doomed)
        )
        deleted = await settle(reader, len(doomed))
        set_faults(emulator, ambiguous_commit_ratio=0.0)

    for phase in (created, updated, deleted):
        assert {s.status for s in phase} == {SUCCEEDED}
        # Each phase met the fault: some write was sent again after its answer was lost.
        assert max(s.attempts for s in phase) > 1
    assert len(set(ids.values())) == len(links)
    # No duplicate create, every update applied, a delete sent again is no failure.
    assert count_accounts(emulator, run) == len(links) - len(doomed)
    rows = soql(emulator, f"SELECT Id, Name FROM Account WHERE Duplex_Id__c LIKE '{run}%'")["records"]
    assert {r["Id"] for r in rows} == {ids[link] for link in links[1::2]}
    assert {r["Name"] for r in rows} == {"updated"}


# ----------------------------------------------------------------------------- replays and duplicates


async def eventually(condition: Callable[[], bool], *, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


def superseded_count(metrics: Metrics) -> float:
    labels = {"tenant": TENANT, "outcome": "superseded"}
    return metrics.registry.get_sample_value("duplex_writer_records_total", labels) or 0.0


async def superseded_rows(dsn: str) -> list[dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT detail FROM sync_log WHERE event = 'write.superseded' ORDER BY id")
    finally:
        await conn.close()
    return [json.loads(r["detail"])["versions"] for r in rows]


async def test_an_old_update_replayed_after_a_newer_one_never_overwrites_salesforce(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    link = f"{run_prefix()}0"
    async with writing(kafka_bootstrap, topic_names, fresh_database, emulator) as (metrics, reader):
        await publish(kafka_bootstrap, topic_names, one(link, {"Name": "v1"}, 1))
        [created] = await settle(reader, 1)
        older = one(link, {"Name": "v2", "Phone": "2"}, 2, operation=UPDATE, id=created.record_id)
        newer = one(link, {"Name": "v3"}, 3, operation=UPDATE, id=created.record_id)
        await publish(kafka_bootstrap, topic_names, older)
        await settle(reader, 1)
        await publish(kafka_bootstrap, topic_names, newer)
        await settle(reader, 1)
        # A person edits the record in Salesforce after Duplex's last write.
        salesforce(emulator, "PATCH", f"/sobjects/Account/{created.record_id}", json={"Name": "person"})
        used = api_used(emulator)

        # A crash replays both updates (the offsets were not committed yet).
        await publish(kafka_bootstrap, topic_names, older, newer)
        replayed = await settle(reader, 2)

        assert [s.status for s in replayed] == [SUPERSEDED, SUPERSEDED]
        assert api_used(emulator) == used  # not even a call
        assert account(emulator, created.record_id)["Name"] == "person"
        # Counted once the outcomes are durable, which is after they were published.
        await eventually(lambda: superseded_count(metrics) > 0, what="the replays counted superseded")
        # The next version is written as usual.
        await publish(
            kafka_bootstrap, topic_names, one(link, {"Name": "v4"}, 4, operation=UPDATE, id=created.record_id)
        )
        [latest] = await settle(reader, 1)
        assert latest.status == SUCCEEDED
        assert account(emulator, created.record_id)["Name"] == "v4"
    rows = await superseded_rows(fresh_database)
    # Both replays are in the sync log, in one row when they were coalesced into one write.
    assert rows
    assert all(set(row) == {link} for row in rows)
    assert max(v for row in rows for v in row.values()) == 3
    # Counted per record write, as the log rows are (the writer stopped: every count is in).
    assert superseded_count(metrics) == len(rows)


@pytest.mark.parametrize("operation", ["create", "update", "delete"])
async def test_a_duplicate_command_is_applied_once(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess, operation: str
) -> None:
    run = run_prefix()
    link = f"{run}0"
    async with writing(kafka_bootstrap, topic_names, fresh_database, emulator) as (_, reader):
        if operation == "create":
            duplicated = one(link, {"Name": "Duplex"}, 1)
        else:
            await publish(kafka_bootstrap, topic_names, one(link, {"Name": "created"}, 1))
            [created] = await settle(reader, 1)
            duplicated = (
                one(link, {"Name": "Duplex"}, 2, operation=UPDATE, id=created.record_id)
                if operation == "update"
                else one(link, {}, 2, operation=DELETE, id=created.record_id)
            )

        # Delivered twice at once.
        await publish(kafka_bootstrap, topic_names, duplicated, duplicated)
        first = await settle(reader, 2)
        # Coalesced into one write, or the second found the first applied when its turn came.
        assert {s.status for s in first} <= {SUCCEEDED, SUPERSEDED}
        record_id = next(s.record_id for s in first if s.status == SUCCEEDED)
        if operation != "delete":
            salesforce(emulator, "PATCH", f"/sobjects/Account/{record_id}", json={"Name": "person"})
        used = api_used(emulator)

        # Delivered once more, late (a rebalance, or a restart before the offset commit).
        await publish(kafka_bootstrap, topic_names, duplicated)
        [late] = await settle(reader, 1)

    assert late.status == SUPERSEDED
    assert api_used(emulator) == used
    if operation == "delete":
        assert count_accounts(emulator, run) == 0
    else:
        assert count_accounts(emulator, run) == 1
        assert account(emulator, record_id)["Name"] == "person"

"""The writer's batched intake: invalid commands amid good ones, against real Kafka, PostgreSQL and the emulator.

An undecodable record and a command breaking the contract arrive in one batch with good commands:
both are dead-lettered with their reason, the good ones are written once, and no committed offset
passes a dead-lettered record before its dead letter is acknowledged. The dead-letter topic's
acknowledgements are held back by a gate around the real send (the records themselves reach Kafka),
so that "not yet durable" lasts as long as the test needs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from duplex.writer.v1 import write_records_pb2

from devstack.emulator import EmulatorProcess
from services.common import kafka as kafka_module
from services.common.codec import event_headers, link_key
from services.common.dlq import ERROR_CLASS, ERROR_REASON, ORIGINAL_OFFSET, ORIGINAL_PARTITION, DeadLetter
from services.common.salesforce import UnlimitedBudget
from services.common.topics import Topic, TopicNames
from services.writer.app import run
from services.writer.consumer import CommandConsumer
from tests.integration.writer.harness import (
    SUCCEEDED,
    TopicReader,
    WriteRecords,
    command,
    count_accounts,
    outcomes,
    prepare_database,
    resolver,
    tenant_document,
    writer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TENANT = "acme-intake"
GARBAGE = b"\xff\x00 not a WriteRecords"


class DeadLetterGate:
    """Holds back the acknowledgement of every dead letter the writer sends until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = asyncio.Event()
        original = kafka_module._DeadLetterSend.__call__
        gate = self

        async def gated(send: Any, letters: Sequence[DeadLetter]) -> None:
            await original(send, letters)
            await gate.open.wait()

        monkeypatch.setattr(kafka_module._DeadLetterSend, "__call__", gated)


class Commits:
    """Counts the writer's commit attempts (its committer's ticks), to wait on instead of sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._changed = asyncio.Condition()
        original = CommandConsumer.commit
        commits = self

        async def counted(consumer: CommandConsumer, only: list[tuple[str, int]] | None = None) -> None:
            await original(consumer, only)
            async with commits._changed:
                commits.count += 1
                commits._changed.notify_all()

        monkeypatch.setattr(CommandConsumer, "commit", counted)

    async def after(self, count: int, *, within: float = 30) -> None:
        """Return once the writer has tried to commit ``count`` more times."""
        target = self.count + count
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.count >= target)


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed position per partition of ``topic`` (absent: none yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0}


async def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]]) -> None:
    """(partition, key, value) records, in order, each declaring itself a WriteRecords as the codec does."""
    headers = [(name, value.encode()) for name, value in event_headers(WriteRecords()).items()]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition, headers=headers)
    finally:
        await producer.stop()


@asynccontextmanager
async def writer(
    bootstrap: str, names: TopicNames, dsn: str, emulator: EmulatorProcess
) -> AsyncIterator[Callable[[], Any]]:
    """A writer with a consumer group of its own; yields a reader of its committed positions."""
    await prepare_database(dsn, [tenant_document(TENANT, emulator)])
    settings = writer_settings(bootstrap, names, dsn, emulator, service_name=f"writer-{uuid.uuid4().hex[:8]}")
    group = f"{names.prefix}{settings.service_name}"
    async with run(settings, secrets=resolver(emulator, {TENANT: "acme"}), budget=UnlimitedBudget()):
        yield lambda: committed(bootstrap, group, names(Topic.CRM_WRITES))


async def test_invalid_commands_amid_a_batch_are_dead_lettered_and_not_committed_past_before_their_letters_are_durable(
    kafka_bootstrap: str,
    topic_names: TopicNames,
    fresh_database: str,
    emulator: EmulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = uuid.uuid4().hex[:8]
    links = [f"{run_id}-{n}" for n in range(4)]
    good = [command(TENANT, [(link, {"Name": f"Intake {link}"})]) for link in links]
    # Valid protobuf, but a write without an object to write to: refused by the writer's contract.
    no_object = WriteRecords(
        command_id=f"{run_id}-no-object", tenant_id=TENANT, operation=write_records_pb2.OPERATION_UPSERT
    )
    no_object.records.add(link_id=f"{run_id}-x", external_id_value=f"{run_id}-x", version=1)

    def key(link: str) -> bytes:
        return link_key(TENANT, link)

    # Partition 0 holds an undecodable record, partition 1 a refused command, each between two good
    # ones; all are there before the writer starts, so that they come in one batch.
    await produce(
        kafka_bootstrap,
        topic_names(Topic.CRM_WRITES),
        [
            (0, key(links[0]), good[0].SerializeToString()),
            (0, key(links[0]), GARBAGE),
            (0, key(links[1]), good[1].SerializeToString()),
            (1, key(links[2]), good[2].SerializeToString()),
            (1, key(f"{run_id}-x"), no_object.SerializeToString()),
            (1, key(links[3]), good[3].SerializeToString()),
        ],
    )
    gate = DeadLetterGate(monkeypatch)
    commits = Commits(monkeypatch)

    async with (
        TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
        TopicReader(kafka_bootstrap, topic_names, Topic.CRM_WRITES_DLQ) as dead,
    ):
        async with writer(kafka_bootstrap, topic_names, fresh_database, emulator) as positions:
            await reader.until(lambda: len(reader.records) >= 4, within=60, what="4 outcomes")
            await dead.until(lambda: len(dead.records) >= 2, within=30, what="2 dead letters sent")
            # Every good command has settled, the dead letters are in Kafka but not acknowledged:
            # the committer, given three more turns, commits up to the dead-lettered records and
            # not past them.
            await commits.after(3)
            assert await positions() == {0: 1, 1: 1}

            gate.open.set()
            while await positions() != {0: 3, 1: 3}:
                await commits.after(1)
        # Stopped: whatever it was going to send is sent (nothing twice).
        await reader.poll()
        await dead.poll()

    settled = outcomes(reader)
    assert sorted(s.link_id for s in settled) == sorted(links)
    assert {s.status for s in settled} == {SUCCEEDED}
    assert count_accounts(emulator, run_id) == 4

    letters = {
        (int(h[ORIGINAL_PARTITION]), int(h[ORIGINAL_OFFSET])): h
        for h in ({k: v.decode() for k, v in r.headers} for r in dead.records)
    }
    assert len(dead.records) == 2
    assert set(letters) == {(0, 1), (1, 1)}
    assert letters[(0, 1)][ERROR_REASON].startswith("not a valid duplex.writer.v1.WriteRecords")
    assert letters[(1, 1)][ERROR_REASON] == f"WriteRecords {run_id}-no-object: no crm_object"
    assert {h[ERROR_CLASS] for h in letters.values()} == {"services.common.errors.InvalidEvent"}
    assert sorted(r.value for r in dead.records) == sorted([GARBAGE, no_object.SerializeToString()])

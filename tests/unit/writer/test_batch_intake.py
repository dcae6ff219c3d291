"""The writer's batched intake: commands handed over in order, refused ones holding their offset until
their dead letter is acknowledged, and a batch's commands of a partition revoked meanwhile left alone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from duplex.writer.v1 import write_records_pb2

from services.common.kafka import Batch, ServiceKafka
from services.writer.batching import RecordWrite
from services.writer.consumer import CommandConsumer
from services.writer.inflight import InFlight
from services.writer.offsets import Partition
from services.writer.parking import ParkStore
from services.writer.payload import WriteResult
from services.writer.tenant import TenantWriters

pytestmark = pytest.mark.unit

WriteRecords = write_records_pb2.WriteRecords
P: Partition = ("crm-writes", 0)


@dataclass
class Assignment:
    partitions: set[Partition] = field(default_factory=lambda: {P})

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t, p in self.partitions}


@dataclass
class Kafka:
    """Just enough of ServiceKafka: the batch subscriber's declaration, kept to look at."""

    consumer: Assignment = field(default_factory=Assignment)
    declared: dict[str, Any] = field(default_factory=dict)

    def batch_subscriber(self, *args: object, **options: Any) -> Any:
        self.declared = options
        return type("Subscriber", (), {"consumer": self.consumer})()


@dataclass
class Tenant:
    submitted: list[RecordWrite] = field(default_factory=list)

    def pending(self) -> int:
        return 0

    def submit(self, writes: list[RecordWrite], refused: list[WriteResult]) -> None:
        self.submitted.extend(writes)


@dataclass
class Tenants:
    tenant: Tenant = field(default_factory=Tenant)

    def of(self, tenant_id: str) -> Tenant:
        return self.tenant

    async def revoke(self, within: float) -> None:
        return None


class NothingParked:
    async def parked_tenants(self, partitions: object) -> dict[str, set[Partition]]:
        return {}


async def build() -> tuple[CommandConsumer, Kafka, InFlight, Tenant]:
    kafka, inflight, tenants = Kafka(), InFlight(), Tenants()
    consumer = CommandConsumer(
        cast(ServiceKafka, kafka),
        inflight=inflight,
        tenants=cast(TenantWriters, tenants),
        store=cast(ParkStore, NothingParked()),
        max_pending=100,
        park_after=30,
        commit_interval=1,
        shutdown_grace=1,
    )
    await consumer.assigned([P])
    return consumer, kafka, inflight, tenants.tenant


def command(name: str, *, crm_object: str = "Account") -> WriteRecords:
    message = WriteRecords(
        command_id=name, tenant_id="acme", crm_object=crm_object, operation=write_records_pb2.OPERATION_CREATE
    )
    message.records.add(link_id=f"link-{name}", external_id_value=name, version=1, fields={})
    return message


def batch(*commands: tuple[int, WriteRecords]) -> Batch[WriteRecords]:
    records = [
        ConsumerRecord(P[0], P[1], offset, 0, 0, b"acme/l", c.SerializeToString(), None, 6, 1, [])
        for offset, c in commands
    ]
    return Batch((c for _, c in commands), (r.key for r in records), records)


def settle_all(inflight: InFlight, writes: list[RecordWrite]) -> None:
    for w in writes:
        for d in inflight.deliveries_of(w):
            inflight.settled(d)


async def test_the_consumer_declares_a_batch_subscriber_that_leaves_every_commit_to_it() -> None:
    consumer, kafka, _, _ = await build()
    assert kafka.declared["offsets"] is consumer
    assert kafka.declared["handler"] == consumer.handle_batch
    assert kafka.declared["listener"] is not None


async def test_a_refused_command_holds_its_offset_until_its_dead_letter_is_acknowledged() -> None:
    consumer, _, inflight, tenant = await build()
    commands = batch((10, command("a")), (11, command("no-object", crm_object="")), (12, command("b")))

    refused = await consumer.handle_batch(commands)

    assert list(refused) == [1]
    assert refused[1].reason == "WriteRecords no-object: no crm_object"
    assert [w.command_id for w in tenant.submitted] == ["0", "1"]  # tokens, in offset order
    settle_all(inflight, tenant.submitted)
    # Both good commands settled; the refused one's dead letter is not acknowledged yet.
    assert inflight.committable({P}) == {P: 11}
    consumer.release([commands.records[1]])
    assert inflight.committable({P}) == {P: 13}


async def test_an_undecodable_record_held_by_the_subscriber_is_passed_only_once_released() -> None:
    consumer, _, inflight, tenant = await build()
    garbage = ConsumerRecord(P[0], P[1], 5, 0, 0, b"acme/l", b"\xff", None, 6, 1, [])

    consumer.hold(garbage)
    await consumer.handle_batch(batch((6, command("a"))))
    settle_all(inflight, tenant.submitted)
    assert inflight.committable({P}) == {P: 5}
    consumer.release([garbage])
    assert inflight.committable({P}) == {P: 7}


async def test_nothing_is_held_for_a_partition_revoked_and_not_assigned_again() -> None:
    consumer, _, inflight, _ = await build()
    garbage = ConsumerRecord(P[0], P[1], 5, 0, 0, b"acme/l", b"\xff", None, 6, 1, [])
    await consumer.revoked([P])
    consumer.hold(garbage)  # a late batch of the lost partition
    consumer.release([garbage])
    # Its new owner replays from its last commit; an offset remembered here would, once the
    # partition came back, let a commit pass records not consumed again yet.
    assert inflight.committable({P}) == {}
    await consumer.assigned([P])
    consumer.hold(garbage)
    assert inflight.committable({P}) == {P: 5}


async def test_commands_of_a_partition_revoked_while_the_batch_is_handed_over_are_left_to_its_new_owner() -> None:
    consumer, _, inflight, tenant = await build()
    # The batch arrives while an assignment is being learnt, then the partition is revoked (and
    # given back): whatever of the batch was fetched before belongs to the replay.
    consumer._assignment_known.clear()
    handling = asyncio.get_running_loop().create_task(
        consumer.handle_batch(batch((20, command("a")), (21, command("b"))))
    )
    await asyncio.sleep(0)
    assert not handling.done()
    await consumer.revoked([P])
    await consumer.assigned([P])
    await asyncio.wait_for(handling, 5)

    assert tenant.submitted == []
    assert inflight.unfinished() == 0

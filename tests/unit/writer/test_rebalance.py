"""A rebalance takes partitions away: their writes not sent yet are dropped, the calls sending some
are waited for, and nothing of theirs touches the offsets afterwards (the partition may come back)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from services.common.kafka import ServiceKafka
from services.writer.batching import Batch, Ingestion, Operation, RecordWrite
from services.writer.commands import Command, CommandRecord, Delivery
from services.writer.consumer import CommandConsumer
from services.writer.inflight import InFlight
from services.writer.offsets import Partition
from services.writer.parking import ParkStore
from services.writer.payload import ItemError, Outcome, WriteResult
from services.writer.tenant import TenantOptions, TenantResources, TenantWriters

pytestmark = pytest.mark.unit

LOST: Partition = ("crm-writes", 0)
KEPT: Partition = ("crm-writes", 1)


def delivery(token: str, partition: Partition, offset: int) -> Delivery:
    return Delivery(
        token=token,
        command_id=f"cmd-{token}",
        tenant_id="acme",
        partition=partition,
        offset=offset,
        backfill=False,
        origin_commit_time=None,
        key=None,
        headers=(),
        timestamp_ms=None,
    )


def write(token: str, link: str, version: int, **fields: str) -> RecordWrite:
    return RecordWrite(
        command_id=token,
        tenant_id="acme",
        crm_object="Account",
        operation=Operation.UPDATE,
        link_id=link,
        fields=fields or {"Name": token},
        version=version,
        record_id=f"001{link}",
    )


def test_a_revoked_delivery_settling_after_its_partition_came_back_leaves_the_new_offsets_alone() -> None:
    inflight = InFlight()
    old = delivery("old", LOST, 7)
    inflight.received(old, 1)
    inflight.revoke([LOST])
    inflight.forget([LOST])
    # The partition is assigned here again: the same command is consumed anew, at the same offset.
    again = delivery("again", LOST, 7)
    inflight.received(again, 1)

    inflight.settled(old)

    assert inflight.committable([LOST]) == {LOST: 7}  # still held by the new delivery
    inflight.settled(again)
    assert inflight.committable([LOST]) == {LOST: 8}


def test_a_dropped_write_forgets_its_delivery_but_not_its_offset_nor_its_park_row() -> None:
    inflight = InFlight(clock=lambda: 0.0)
    held = delivery("held", LOST, 3)
    inflight.received(held, 1)
    assert inflight.parked([(held, 41)]) == []
    other = delivery("other", KEPT, 0)
    inflight.received(other, 1)
    inflight.revoke([LOST])

    assert inflight.revoked(write("held", "l1", 1))
    assert not inflight.revoked(write("other", "l2", 1))
    assert inflight.held_since(1.0) == [other]  # a revoked one is not parked again here
    inflight.drop(write("held", "l1", 1))

    assert inflight.deliveries_of(write("held", "l1", 1)) == []
    assert inflight.park_ids() == set()  # the row stays in PostgreSQL for the new owner


@dataclass
class GatedExecutor:
    """Holds every call until ``release`` is set; answers the first with ``first``, later ones succeed."""

    first: Outcome
    release: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[list[str]] = field(default_factory=list)
    calling: asyncio.Event = field(default_factory=asyncio.Event)

    async def execute(self, batch: Batch, *, backfill: bool = False) -> list[WriteResult]:
        self.sent.append([w.command_id for w in batch.writes])
        self.calling.set()
        await self.release.wait()
        if self.first is Outcome.RETRY and len(self.sent) == 1:
            error = ItemError("UNABLE_TO_LOCK_ROW", "locked")
            return [WriteResult(w, Outcome.RETRY, errors=(error,)) for w in batch.writes]
        return [WriteResult(w, Outcome.SUCCEEDED, record_id=w.record_id) for w in batch.writes]


@dataclass
class Settler:
    settled: list[WriteResult] = field(default_factory=list)
    # Set once the kept partition's write settled: it is sent after the revoked call.
    kept_settled: asyncio.Event = field(default_factory=asyncio.Event)

    async def settle(self, tenant_id: str, settled: list[tuple[WriteResult, int]]) -> None:
        self.settled.extend(r for r, _ in settled)
        if any(r.write.command_id == "k1" for r, _ in settled):
            self.kept_settled.set()


class NoVersions:
    async def applied(self, tenant_id: str, link_ids: object) -> dict[str, int]:
        return {}


@dataclass
class World:
    executor: GatedExecutor
    inflight: InFlight = field(default_factory=InFlight)
    settler: Settler = field(default_factory=Settler)

    def __post_init__(self) -> None:
        async def resources(tenant_id: str) -> TenantResources:
            return TenantResources(self.executor, Ingestion.REST)

        self.tenants = TenantWriters(
            resources=resources,
            settler=self.settler,
            versions=NoVersions(),
            deliveries=self.inflight,
            # One call at a time, cut at once: the test decides what is in flight.
            options=TenantOptions(window=timedelta(0), max_wait=timedelta(0), concurrency=1),
        )

    def submit(self, token: str, partition: Partition, offset: int, link: str, version: int) -> None:
        self.inflight.received(delivery(token, partition, offset), 1)
        self.tenants.of("acme").submit([write(token, link, version)], [])


@pytest.mark.parametrize("answer", [Outcome.SUCCEEDED, Outcome.RETRY])
async def test_revocation_drops_unsent_writes_and_waits_for_the_call_sending_one(answer: Outcome) -> None:
    world = World(GatedExecutor(first=answer))
    try:
        world.submit("a1", LOST, 0, "l1", 1)
        await asyncio.wait_for(world.executor.calling.wait(), 5)  # a1 is being sent
        world.submit("a2", LOST, 1, "l1", 2)  # waits behind a1 (same record)
        world.submit("b1", LOST, 2, "l2", 1)  # batched, not sent: only one call at a time
        world.submit("k1", KEPT, 0, "l3", 1)

        world.inflight.revoke([LOST])
        revoking = asyncio.get_running_loop().create_task(world.tenants.revoke(within=5))
        await asyncio.sleep(0.05)
        assert not revoking.done(), "the rebalance must wait for the call still sending a1"
        world.executor.release.set()
        await asyncio.wait_for(revoking, 5)
        world.inflight.forget([LOST])
        await asyncio.wait_for(world.settler.kept_settled.wait(), 5)

        sent = [token for call in world.executor.sent for token in call]
        # a1 was on its way; a2 and b1 are left to the partition's new owner, even when a1 must be retried.
        assert sent.count("a1") == 1
        assert {"a2", "b1"}.isdisjoint(sent)
        assert "k1" in sent
        settled = {r.write.command_id: r.outcome for r in world.settler.settled}
        expected = {"k1": Outcome.SUCCEEDED} | ({"a1": Outcome.SUCCEEDED} if answer is Outcome.SUCCEEDED else {})
        assert settled == expected
        assert world.tenants.of("acme").pending() == 0
        dropped = ["a2", "b1"] if answer is Outcome.SUCCEEDED else ["a1", "a2", "b1"]
        assert all(world.inflight.deliveries_of(write(token, "-", 0)) == [] for token in dropped)
    finally:
        world.executor.release.set()
        await world.tenants.stop(within=5)


# ----------------------------------------------------------------------------- assignment


class FakeKafka:
    """Just enough of ServiceKafka for CommandConsumer to declare its subscriber."""

    def batch_subscriber(self, *args: object, **kwargs: object) -> Any:
        class Subscriber:
            consumer = None

        return Subscriber()


@dataclass
class SlowParkStore:
    """Parked rows of ``acme`` on LOST; the first read of them fails (PostgreSQL restarting)."""

    reads: int = 0
    parked: list[Delivery] = field(default_factory=list)

    async def parked_tenants(self, partitions: object) -> dict[str, set[Partition]]:
        self.reads += 1
        if self.reads == 1:
            raise ConnectionError("the database restarts")
        return {"acme": {LOST}}

    async def park(self, deliveries: Sequence[tuple[Delivery, str]]) -> list[int]:
        self.parked.extend(d for d, _ in deliveries)
        return list(range(len(deliveries)))

    async def load(self, *args: object) -> list[Any]:
        return []

    async def unpark(self, park_ids: object) -> None:
        return None


@dataclass
class Tenant:
    submitted: list[RecordWrite] = field(default_factory=list)

    def pending(self) -> int:
        return 0

    def submit(self, writes: list[RecordWrite], refused: list[WriteResult]) -> None:
        self.submitted.extend(writes)


async def test_a_command_consumed_while_the_assignment_is_learnt_waits_and_queues_behind_parked_ones() -> None:
    store, tenant = SlowParkStore(), Tenant()
    tenants = type("Tenants", (), {"of": lambda self, tenant_id: tenant})()
    consumer = CommandConsumer(
        cast(ServiceKafka, FakeKafka()),
        inflight=InFlight(),
        tenants=cast(TenantWriters, tenants),
        store=cast(ParkStore, store),
        max_pending=100,
        park_after=30,
        commit_interval=1,
        shutdown_grace=1,
    )
    command = Command(
        "cmd-1",
        "acme",
        "Account",
        Operation.UPDATE,
        "",
        (CommandRecord("l1", {"Name": "x"}, 3, "", "001"),),
        False,
        None,
    )
    record = ConsumerRecord(LOST[0], LOST[1], 12, 0, 0, b"k", b"v", None, 1, 1, [])

    assigning = asyncio.get_running_loop().create_task(consumer.assigned([LOST]))
    await asyncio.sleep(0)  # the first read of the parked rows is under way (and fails)
    handling = asyncio.get_running_loop().create_task(consumer.handle(command, record))
    await asyncio.wait_for(asyncio.gather(assigning, handling), 5)
    await consumer._parking.park_held(older_than=30)

    # Handled only once the assignment was known: behind acme's parked commands, not past them.
    assert store.reads == 2
    assert tenant.submitted == []
    assert [d.command_id for d in store.parked] == ["cmd-1"]

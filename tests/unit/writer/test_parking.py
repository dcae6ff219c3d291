"""Parking: a tenant over its share, or held too long, never holds the shared partition's offset,
and its parked commands come back in order, once each, when it has room."""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from services.common.metrics import Metrics
from services.writer.batching import Operation, RecordWrite
from services.writer.commands import Command, CommandRecord, Delivery
from services.writer.inflight import InFlight
from services.writer.offsets import Partition
from services.writer.parking import ParkedCommand, Parking, Reason
from services.writer.payload import WriteResult

pytestmark = pytest.mark.unit

P0: Partition = ("crm-writes", 0)
P1: Partition = ("crm-writes", 1)
MAX_PENDING = 4


def encoded(tenant: str, link: str) -> bytes:
    return json.dumps({"tenant": tenant, "link": link}).encode()


def decode(value: bytes) -> Command:
    body = json.loads(value)
    return Command(
        command_id=f"cmd-{body['link']}",
        tenant_id=body["tenant"],
        crm_object="Account",
        operation=Operation.UPSERT,
        external_id_field="Duplex_Id__c",
        records=(CommandRecord(body["link"], {}, 1, body["link"], ""),),
        backfill=False,
        origin_commit_time=None,
    )


@dataclass
class Store:
    rows: list[ParkedCommand] = field(default_factory=list)
    reasons: dict[int, Reason] = field(default_factory=dict)
    failing: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def park(self, deliveries: Sequence[tuple[Delivery, Reason]]) -> list[int]:
        if self.failing:
            raise ConnectionError("database away")
        ids = []
        for delivery, reason in deliveries:
            row = ParkedCommand(
                next(self._ids),
                delivery.tenant_id,
                delivery.partition,
                delivery.offset,
                delivery.key,
                delivery.headers,
                delivery.timestamp_ms,
                delivery.value,
            )
            self.rows.append(row)
            self.reasons[row.id] = reason
            ids.append(row.id)
        return ids

    async def load(self, tenant_id: str, partition: Partition, after: int, limit: int) -> list[ParkedCommand]:
        mine = [r for r in self.rows if r.tenant_id == tenant_id and r.partition == partition and r.id > after]
        return mine[:limit]

    async def parked_tenants(self, partitions: Collection[Partition]) -> dict[str, set[Partition]]:
        tenants: dict[str, set[Partition]] = {}
        for row in self.rows:
            if row.partition in partitions:
                tenants.setdefault(row.tenant_id, set()).add(row.partition)
        return tenants

    def delete(self, park_id: int) -> None:
        self.rows = [r for r in self.rows if r.id != park_id]

    async def unpark(self, park_ids: Collection[int]) -> None:
        for park_id in park_ids:
            self.delete(park_id)


@dataclass
class Tenant:
    held: list[RecordWrite] = field(default_factory=list)

    def pending(self) -> int:
        return len(self.held)

    def submit(self, writes: list[RecordWrite], refused: list[WriteResult]) -> None:
        self.held.extend(writes)


@dataclass
class Tenants:
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def of(self, tenant_id: str) -> Tenant:
        return self.tenants.setdefault(tenant_id, Tenant())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    tenants: Tenants
    inflight: InFlight
    parking: Parking
    clock: Clock
    registry: CollectorRegistry
    offsets: itertools.count[int] = field(default_factory=itertools.count)
    tokens: itertools.count[int] = field(default_factory=itertools.count)

    def consume(self, tenant: str, link: str, partition: Partition = P0) -> Delivery:
        """What the consumer does with one command: parked, or handed to its tenant."""
        offset = next(self.offsets)
        delivery = Delivery(
            token=f"k{offset}",
            command_id=f"cmd-{link}",
            tenant_id=tenant,
            partition=partition,
            offset=offset,
            backfill=False,
            origin_commit_time=None,
            key=None,
            headers=(("h", b"\x00"),),
            timestamp_ms=offset,
            value=encoded(tenant, link),
        )
        if not self.parking.takes(delivery):
            self.inflight.received(delivery, 1)
            self.tenants.of(tenant).submit(_writes(delivery), [])
        return delivery

    def settle_all(self, tenant: str) -> None:
        """The tenant's org answers every write it holds."""
        self.settle(tenant, set(self.links(tenant)))

    def settle(self, tenant: str, links: set[str]) -> None:
        """The tenant's org answers the writes to ``links``."""
        writer = self.tenants.of(tenant)
        answered = [w for w in writer.held if w.link_id in links]
        writer.held = [w for w in writer.held if w.link_id not in links]
        for write in answered:
            for delivery in self.inflight.deliveries_of(write):
                park_id = self.inflight.settled(delivery)
                if park_id is not None:
                    self.store.delete(park_id)

    def position(self, partition: Partition = P0) -> int | None:
        return self.inflight.committable([partition]).get(partition)

    def links(self, tenant: str) -> list[str]:
        return [w.link_id for w in self.tenants.of(tenant).held]


def _writes(delivery: Delivery) -> list[RecordWrite]:
    command = decode(delivery.value)
    record = command.records[0]
    return [
        RecordWrite(
            command_id=delivery.token,
            tenant_id=command.tenant_id,
            crm_object=command.crm_object,
            operation=command.operation,
            link_id=record.link_id,
            fields={},
            version=1,
            external_id_field=command.external_id_field,
            external_id_value=record.external_id_value,
        )
    ]


@pytest.fixture
def world() -> World:
    store, tenants, clock, registry = Store(), Tenants(), Clock(), CollectorRegistry()
    inflight = InFlight(clock=clock)
    tokens = itertools.count()
    parking = Parking(
        store,
        inflight=inflight,
        tenants=tenants,
        decode=decode,
        tokens=lambda: f"p{next(tokens)}",
        max_pending=MAX_PENDING,
        park_after=30.0,
        clock=clock,
        metrics=Metrics(registry),
    )
    return World(store, tenants, inflight, parking, clock, registry)


async def test_a_tenant_over_its_share_is_parked_and_stops_holding_the_partition(world: World) -> None:
    for n in range(MAX_PENDING):
        world.consume("slow", f"s{n}")
    parked = [world.consume("slow", f"s{n}") for n in range(MAX_PENDING, 10)]
    world.consume("fast", "f0")
    world.settle_all("fast")

    assert world.links("slow") == ["s0", "s1", "s2", "s3"]
    assert world.position() == 0  # the slow tenant's first command is unsettled (and not yet parked)

    await world.parking.tick([P0])

    assert [(r.offset, world.store.reasons[r.id]) for r in world.store.rows] == [(d.offset, "overflow") for d in parked]
    assert world.store.rows[0].headers == (("h", b"\x00"),)
    assert world.position() == 0  # still held by the in-memory four, until they are held too long
    world.clock.now = 31.0
    await world.parking.tick([P0])
    assert world.position() == 11  # nothing holds the partition any more
    assert sorted(world.store.reasons.values()).count("held") == MAX_PENDING
    for reason, count in (("overflow", 6), ("held", MAX_PENDING)):
        labels = {"tenant": "slow", "reason": reason}
        assert world.registry.get_sample_value("duplex_writer_parked_total", labels) == count


async def test_parked_commands_come_back_in_order_once_there_is_room_and_later_ones_queue_behind(
    world: World,
) -> None:
    for n in range(10):
        world.consume("slow", f"s{n}")
    await world.parking.tick([P0])
    world.settle_all("slow")  # the org answers: half the share is free again
    world.consume("slow", "s10")  # queues behind the parked ones, although there is room now

    await world.parking.tick([P0])

    assert world.links("slow") == ["s4", "s5", "s6", "s7"]
    world.settle_all("slow")
    await world.parking.tick([P0])
    await world.parking.tick([P0])
    assert world.links("slow") == ["s8", "s9", "s10"]
    world.settle_all("slow")
    assert world.store.rows == []  # each row deleted once its command settled
    world.consume("slow", "s11")
    assert world.links("slow") == ["s11"]  # drained: handed over directly again
    assert world.position() == 11


async def test_a_command_held_too_long_is_parked_but_written_from_memory_not_loaded_again(world: World) -> None:
    world.consume("slow", "s0")
    world.clock.now = 31.0
    await world.parking.tick([P0])
    assert world.position() == 1
    assert [world.store.reasons[r.id] for r in world.store.rows] == ["held"]
    # Overflow on the same partition while s0 is still unanswered: the drain must skip its row.
    for n in range(1, 6):
        world.consume("slow", f"s{n}")
    world.settle("slow", {"s1", "s2", "s3"})
    await world.parking.tick([P0])

    assert world.links("slow") == ["s0", "s4", "s5"]
    world.settle_all("slow")
    assert world.store.rows == []


async def test_rows_left_by_a_previous_owner_are_drained_before_that_tenants_new_commands(world: World) -> None:
    await world.store.park(
        [
            (
                Delivery("x", "cmd-old", "slow", P1, 7, False, None, None, (), None, encoded("slow", "old")),
                "held",
            )
        ]
    )
    await world.parking.assigned([P1])
    world.consume("slow", "new", P1)
    world.consume("other", "o", P1)
    assert world.links("slow") == []
    assert world.links("other") == ["o"]

    await world.parking.tick([P1])

    assert world.links("slow") == ["old", "new"]


async def test_a_database_outage_keeps_waiting_commands_holding_their_offset_until_they_are_parked(
    world: World,
) -> None:
    for n in range(6):
        world.consume("slow", f"s{n}")
    world.store.failing = True
    with pytest.raises(ConnectionError):
        await world.parking.tick([P0])
    assert world.store.rows == []
    world.settle_all("slow")
    assert world.position() == MAX_PENDING  # the waiting ones still hold it

    world.store.failing = False
    await world.parking.tick([P0])
    assert world.position() == 6
    assert world.links("slow") == ["s4", "s5"]


async def test_a_lost_partition_leaves_its_waiting_commands_to_the_new_owner(world: World) -> None:
    for n in range(6):
        world.consume("slow", f"s{n}")
    world.parking.forget([P0])
    world.inflight.forget([P0])
    await world.parking.tick([])
    assert world.store.rows == []


async def test_a_held_command_that_settles_while_its_row_is_written_leaves_no_row(world: World) -> None:
    world.consume("slow", "s0")
    world.clock.now = 31.0
    park = world.store.park

    async def settling_meanwhile(deliveries: Sequence[tuple[Delivery, Reason]]) -> list[int]:
        ids = await park(deliveries)
        world.settle_all("slow")  # the org answered while the INSERT was on its way
        return ids

    world.store.park = settling_meanwhile  # type: ignore[method-assign]
    await world.parking.tick([P0])

    assert world.store.rows == []
    assert world.position() == 1

"""Per-tenant flow control: no tenant ever holds a shared crm-writes partition.

Tenants share partitions, and a partition's committed offset is the lowest one still unsettled
(:mod:`services.writer.offsets`). So a tenant that cannot write (out of API budget, its org down,
paused) would hold every other tenant's offsets, and waiting for it would stop the consumer for
all. Instead the consumer never waits, and a tenant's commands are set aside ("parked") in
PostgreSQL (``deploy/sql/0012_writer_parked_commands.sql``), where they are as durable as in
Kafka, so the partition moves on:

* **overflow**: a tenant holding ``max_pending`` unsettled writes in memory gets no more; its
  later commands from that partition are parked unseen, and so is every command after them on
  that partition until the park has drained (per record, Salesforce order is partition order);
* **held**: a command still unsettled ``park_after`` after it arrived is parked too, but stays in
  memory and is written as usual; only its offset is released.

Every committer tick (:meth:`Parking.tick`) parks what waits, then loads each overflowing
tenant's next commands, in id order, while it has room for them (half of ``max_pending`` free).
A parked command's row is deleted once its last outcome is durable; until then a restart or a
rebalance finds it and loads it again (whoever owns the partition then), and a write already
applied is settled as superseded without a call (:mod:`services.writer.versions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from services.common.errors import InvalidEvent
from services.common.metrics import Metrics
from services.writer.batching import RecordWrite
from services.writer.commands import Command, Delivery, record_writes
from services.writer.inflight import InFlight
from services.writer.offsets import Partition
from services.writer.payload import WriteResult

log = logging.getLogger(__name__)

Reason = Literal["overflow", "held"]

# Rows read per query while draining.
_LOAD_PAGE = 500


@dataclass(frozen=True)
class ParkedCommand:
    """One row of writer_parked_commands: a consumed record, as it was consumed."""

    id: int
    tenant_id: str
    partition: Partition
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None
    command: bytes


class ParkStore(Protocol):
    async def park(self, deliveries: Sequence[tuple[Delivery, Reason]]) -> list[int]:
        """Store ``deliveries`` durably; their row ids, in the same order."""
        ...

    async def load(self, tenant_id: str, partition: Partition, after: int, limit: int) -> list[ParkedCommand]:
        """Up to ``limit`` of the tenant's rows from ``partition`` with an id above ``after``, by id."""
        ...

    async def parked_tenants(self, partitions: Collection[Partition]) -> dict[str, set[Partition]]:
        """Which tenants have rows from which of ``partitions``."""
        ...

    async def unpark(self, park_ids: Collection[int]) -> None:
        """Delete these rows."""
        ...


class Tenant(Protocol):
    def pending(self) -> int: ...
    def submit(self, writes: list[RecordWrite], refused: list[WriteResult]) -> None: ...


class Tenants(Protocol):
    def of(self, tenant_id: str) -> Tenant: ...


class Parking:
    """Which tenants overflow on which partitions, what waits to be parked, and the drain (module doc)."""

    def __init__(
        self,
        store: ParkStore,
        *,
        inflight: InFlight,
        tenants: Tenants,
        decode: Callable[[bytes], Command],
        tokens: Callable[[], str],
        max_pending: int,
        park_after: float,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._inflight = inflight
        self._tenants = tenants
        self._decode = decode
        self._tokens = tokens
        self._max_pending = max_pending
        self._park_after = park_after
        self._clock = clock
        self._waiting: list[Delivery] = []
        # tenant -> partitions whose later commands of that tenant go to the park
        self._overflowing: dict[str, set[Partition]] = {}
        # (tenant, partition) -> highest row id loaded from there
        self._loaded_up_to: dict[tuple[str, Partition], int] = {}
        self._metrics = metrics

    def takes(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` must be parked instead of handed to its tenant (then it is taken)."""
        tenant, partition = delivery.tenant_id, delivery.partition
        overflowing = self._overflowing.get(tenant, set())
        if partition not in overflowing:
            if self._tenants.of(tenant).pending() < self._max_pending:
                return False
            overflowing.add(partition)
            self._overflowing[tenant] = overflowing
            log.warning(
                "tenant holds its share of unsettled writes; parking its later commands",
                extra={"tenant_id": tenant, "partition": partition[1], "max_pending": self._max_pending},
            )
        self._inflight.waiting(delivery)
        self._waiting.append(delivery)
        return True

    async def tick(self, assigned: Collection[Partition]) -> None:
        """Park what waits and what was held too long, then load overflowing tenants' next commands."""
        await self.park_held(older_than=self._park_after)
        for tenant, partitions in list(self._overflowing.items()):
            for partition in sorted(partitions.intersection(assigned)):
                await self._drain(tenant, partition)

    async def park_held(self, *, older_than: float) -> None:
        """Park what waits, and every delivery held for ``older_than`` seconds or more."""
        waiting, self._waiting = self._waiting, []
        held = self._inflight.held_since(self._clock() - older_than)
        rows: list[tuple[Delivery, Reason]] = [(d, "overflow") for d in waiting] + [(d, "held") for d in held]
        if not rows:
            return
        try:
            ids = await self._store.park(rows)
        except BaseException:
            self._waiting = waiting + self._waiting
            raise
        self._inflight.released(waiting)
        # A held command may have settled while its row was written: nothing stands for it then.
        await self._store.unpark(self._inflight.parked(zip(held, ids[len(waiting) :], strict=True)))
        if self._metrics is not None:
            for delivery, reason in rows:
                self._metrics.writer_parked.labels(delivery.tenant_id, reason).inc()

    async def _drain(self, tenant_id: str, partition: Partition) -> None:
        room = self._max_pending - self._tenants.of(tenant_id).pending()
        if room < self._max_pending // 2:
            return
        in_memory = self._inflight.park_ids()
        while room > 0:
            after = self._loaded_up_to.get((tenant_id, partition), 0)
            limit = min(room, _LOAD_PAGE)
            rows = await self._store.load(tenant_id, partition, after, limit)
            for row in rows:
                self._loaded_up_to[(tenant_id, partition)] = row.id
                if row.id not in in_memory:
                    room -= self._hand_over(row)
            if len(rows) < limit:
                break
        else:
            return
        if not any(d.tenant_id == tenant_id and d.partition == partition for d in self._waiting):
            self._overflowing[tenant_id].discard(partition)
            log.info("tenant's parked commands all loaded", extra={"tenant_id": tenant_id, "partition": partition[1]})

    def _hand_over(self, row: ParkedCommand) -> int:
        """Give the command of ``row`` to its tenant; the number of record writes it carries."""
        try:
            command = self._decode(row.command)
        except InvalidEvent:
            # It was decoded before it was parked: only a contract change between releases gets here.
            log.exception(
                "parked command cannot be decoded; its row is left for an operator", extra={"park_id": row.id}
            )
            return 0
        token = self._tokens()
        writes, refused = record_writes(command, token)
        delivery = Delivery(
            token=token,
            command_id=command.command_id,
            tenant_id=command.tenant_id,
            partition=row.partition,
            offset=row.offset,
            backfill=command.backfill,
            origin_commit_time=command.origin_commit_time,
            key=row.key,
            headers=row.headers,
            timestamp_ms=row.timestamp_ms,
            value=row.command,
        )
        items = len(writes) + len(refused)
        self._inflight.received(delivery, items, park_id=row.id)
        self._tenants.of(row.tenant_id).submit(writes, refused)
        return items

    async def assigned(self, partitions: Collection[Partition]) -> None:
        """Partitions this consumer got: tenants with parked rows there overflow until they drained."""
        for tenant, parked in (await self._store.parked_tenants(partitions)).items():
            self._overflowing.setdefault(tenant, set()).update(parked)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions this consumer lost: their new owner drains their rows."""
        lost = set(partitions)
        self._waiting = [d for d in self._waiting if d.partition not in lost]
        for overflowing in self._overflowing.values():
            overflowing -= lost
        self._loaded_up_to = {k: v for k, v in self._loaded_up_to.items() if k[1] not in lost}

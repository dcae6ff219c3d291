"""The crm-writes consumer: commands in, writes handed to their tenants, settled offsets committed.

Offsets with batching
=====================
The crm-writes subscriber takes up to 500 commands at a time (``getmany``: faststream's path,
its middlewares and the guard, once per batch instead of once per command) through
:meth:`ServiceKafka.batch_subscriber` with its manual offsets (``AckPolicy.MANUAL``): faststream
never commits, nor does anything here call ``msg.ack()`` (which would commit *every* consumed
position, including commands still waiting in a batch). Instead:

1. the handler decodes each command of the batch in offset order, registers it in
   :class:`~services.writer.inflight.InFlight`
   with the number of record writes it carries, hands the writes to its tenant's
   :class:`~services.writer.tenant.TenantWriter` and returns; it never waits for a tenant: one
   that holds too many unsettled writes has its later commands parked in PostgreSQL instead
   (:mod:`services.writer.parking`);
2. when a write settles, :class:`~services.writer.settle.Settlement` produces its outcomes (and
   DLQ record, and sync-log rows) durably, then tells ``InFlight``;
3. a committer task parks what must be parked (commands of overflowing tenants, and commands
   held unsettled for ``park_after``), loads parked commands for tenants with room again, and
   commits, per partition, the lowest offset that still has unsettled writes neither settled nor
   parked (or one past the last seen), with explicit offsets, every ``commit_interval_ms`` and on
   partition revocation and shutdown.

An invalid command (undecodable, or breaking the contract) is dead-lettered with its reason by the
batch subscriber, as the guard does for any service; its offset is held in ``InFlight`` from
before any later command of the batch is handed over until its dead letter is acknowledged, so no
commit passes a record whose dead letter is not durable. Past the breaker's limit the consumer
halts with that record held, never committed.

A crash therefore replays exactly the commands without every outcome produced (and the settled
ones after them); the replay is harmless because a write at or below the version already applied
to its link is not sent again (:mod:`services.writer.versions`), creates are upserts on the
external id, deleting a deleted record succeeds, and outcomes are applied by version downstream.

Rebalances
==========
Before partitions are given to another consumer, their writes not sent yet are dropped and the
calls still sending some are waited for (:meth:`CommandConsumer.revoked`), so that two replicas
never write one record at once: the version check happens before a call, and of two calls that
both passed it the older could otherwise land last. For the same reason the rest of a batch
fetched before a rebalance skips the commands of partitions no longer assigned (their new owner
replays them).

Shutdown
========
Stop fetching, let held writes settle, park what is still held, commit once more, and only then
close the consumer (a commit issued while aiokafka closes its consumer never returns), then stop
the tenants' loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from services.common.errors import InvalidEvent
from services.common.kafka import Batch, ServiceKafka
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy
from services.common.topics import Topic
from services.writer.commands import Command, Delivery, record_writes
from services.writer.contract import WriteRecords, command_of
from services.writer.inflight import InFlight
from services.writer.offsets import Partition
from services.writer.parking import Parking, ParkStore
from services.writer.tenant import TenantWriters

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_SECONDS = 10.0
# How long a rebalance waits for the calls still sending writes of revoked partitions: a REST call
# ends well within it; a Bulk job may not (its writes then settle late, each once, by version).
REVOKE_WAIT_SECONDS = 30.0
# How often a shutdown looks whether every held write has settled.
_DRAIN_POLL_SECONDS = 0.05
# Tenant loops get this long beyond the grace to stop once cancelled.
_STOP_MARGIN_SECONDS = 5.0
_ASSIGN_RETRY = RetryPolicy(base_delay=0.2, max_delay=5.0, max_attempts=None)


class CommandConsumer:
    """The crm-writes subscriber and its committer (see the module doc).

    Declares its subscriber on ``kafka`` when built, so build it before the broker starts, and
    enter :meth:`running` once it has.
    """

    def __init__(
        self,
        kafka: ServiceKafka,
        *,
        inflight: InFlight,
        tenants: TenantWriters,
        store: ParkStore,
        max_pending: int,
        park_after: float,
        commit_interval: float,
        shutdown_grace: float,
        revoke_wait: float = REVOKE_WAIT_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self._inflight = inflight
        self._revoke_wait = revoke_wait
        self._tenants = tenants
        self._park_after = park_after
        self._commit_interval = commit_interval
        self._shutdown_grace = shutdown_grace
        self._tokens = itertools.count()
        self._parking = Parking(
            store,
            inflight=inflight,
            tenants=tenants,
            decode=lambda value: command_of(WriteRecords.FromString(value)),
            tokens=self._token,
            max_pending=max_pending,
            park_after=park_after,
            clock=time.monotonic,
            metrics=metrics,
        )
        # Cleared while a rebalance's assignment is being learnt: aiokafka may deliver records of the
        # new partitions meanwhile, and a command handed over before its tenant's parked ones would
        # overtake them.
        self._assignment_known = asyncio.Event()
        self._assignment_known.set()
        self._commit_lock = asyncio.Lock()
        # Cleared by the shutdown's last commit: no commit may start while the consumer closes.
        self._may_commit = True
        # Rebalance callbacks so far, and the count at each partition's latest revocation and
        # assignment: a batch skips the commands of a partition revoked since it began, even one
        # assigned here again (it is replayed), and nothing is held for a partition not owned.
        self._rebalances = 0
        self._revoked_at: dict[Partition, int] = {}
        self._assigned_at: dict[Partition, int] = {}
        self._subscriber = kafka.batch_subscriber(
            Topic.CRM_WRITES,
            message_type=WriteRecords,
            handler=self.handle_batch,
            offsets=self,
            listener=_Rebalance(self),
        )

    def _token(self) -> str:
        return str(next(self._tokens))

    async def handle_batch(self, batch: Batch[WriteRecords]) -> dict[int, InvalidEvent]:
        """Hand over a batch's commands in offset order; returns the invalid ones (to dead-letter),
        their offsets held (module doc)."""
        refused: dict[int, InvalidEvent] = {}
        begun = self._rebalances
        for index, (message, record) in enumerate(zip(batch, batch.records, strict=True)):
            # Revoked while the batch was handed over: its new owner replays the rest (and a
            # refused command is dead-lettered there again, which dead-letter readers deduplicate).
            partition = (record.topic, record.partition)
            try:
                command = command_of(message)
            except InvalidEvent as error:
                if self._revoked_at.get(partition, begun) <= begun:
                    self.hold(record)
                refused[index] = error
                continue
            await self._assignment_known.wait()
            if self._revoked_at.get(partition, begun) <= begun:
                await self.handle(command, record)
        return refused

    def hold(self, record: ConsumerRecord[Any, Any]) -> None:
        """``record`` is being dead-lettered: its offset is not committed past until :meth:`release`."""
        partition = (record.topic, record.partition)
        # A partition revoked and not assigned again: an offset seen now would outlive its
        # forgetting, and could later be committed past records not consumed yet.
        if self._assigned_at.get(partition, -1) > self._revoked_at.get(partition, -1):
            self._inflight.waiting(_placeholder(record))

    def release(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """The dead letters of ``records`` are acknowledged: their offsets may be committed past (a
        record not held, or forgotten by a rebalance meanwhile, holds nothing to release)."""
        self._inflight.released([_placeholder(record) for record in records])

    async def handle(self, command: Command, record: ConsumerRecord[bytes, bytes]) -> None:
        """Register ``command`` and hand its writes to its tenant (module doc, step 1)."""
        await self._assignment_known.wait()
        token = self._token()
        writes, refused = record_writes(command, token)
        delivery = Delivery(
            token=token,
            command_id=command.command_id,
            tenant_id=command.tenant_id,
            partition=(record.topic, record.partition),
            offset=record.offset,
            backfill=command.backfill,
            origin_commit_time=command.origin_commit_time,
            key=record.key,
            headers=tuple(record.headers or ()),
            timestamp_ms=record.timestamp,
            value=record.value or b"",
        )
        items = len(writes) + len(refused)
        if items == 0 or not self._parking.takes(delivery):
            self._inflight.received(delivery, items)
            if items:
                self._tenants.of(command.tenant_id).submit(writes, refused)

    def _assigned(self) -> set[Partition]:
        consumer = self._subscriber.consumer
        return set() if consumer is None else {(tp.topic, tp.partition) for tp in consumer.assignment()}

    async def commit(self, only: list[Partition] | None = None) -> None:
        """Commit every assigned partition's position that moved (of ``only``, when given)."""
        consumer = self._subscriber.consumer
        if consumer is None or not self._may_commit:
            return
        async with self._commit_lock:
            assigned = self._assigned()
            positions = self._inflight.committable(assigned if only is None else assigned.intersection(only))
            if not positions:
                return
            try:
                # Bounded: aiokafka retries a commit for as long as the coordinator is unknown, and
                # forever once the consumer is closing. A commit given up is replayed, never lost.
                async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in positions.items()})
            except Exception as exc:
                # A rebalance moved the partition or the broker is away: the next owner (or this
                # one, on the next tick) goes on from the last commit that landed.
                log.warning("offset commit failed", extra={"reason": str(exc) or type(exc).__name__})
                return
            self._inflight.committed(positions)

    async def revoked(self, partitions: list[Partition]) -> None:
        """Partitions taken away by a rebalance: their writes not sent yet are dropped and the calls
        sending some are waited for (the new owner must not write the same records meanwhile);
        then what settled is committed, and the rest forgotten (the new owner replays it)."""
        self._rebalances += 1
        self._revoked_at.update(dict.fromkeys(partitions, self._rebalances))
        self._inflight.revoke(partitions)
        await self._tenants.revoke(within=self._revoke_wait)
        await self.commit(only=partitions)
        self._inflight.forget(partitions)
        self._parking.forget(partitions)

    async def assigned(self, partitions: list[Partition]) -> None:
        """Partitions given by a rebalance: learn which tenants have commands parked from them, so
        that their later commands queue behind those (retried, and no command is handled meanwhile:
        order depends on it)."""
        self._rebalances += 1
        self._assigned_at.update(dict.fromkeys(partitions, self._rebalances))
        self._assignment_known.clear()
        attempt = 0
        while True:
            try:
                await self._parking.assigned(partitions)
                break
            except Exception as exc:
                attempt += 1
                log.warning("parked commands unreadable, retrying", extra={"reason": str(exc) or type(exc).__name__})
                await asyncio.sleep(_ASSIGN_RETRY.delay(attempt))
        self._assignment_known.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Committing every ``commit_interval`` until the block exits, then the shutdown (module doc)."""
        committer = asyncio.get_running_loop().create_task(self._commit_loop(), name="writer-commits")
        try:
            yield
        finally:
            await self._shut_down(committer)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            await self._park(self._parking.tick(self._assigned()))
            await self.commit()

    async def _park(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            # PostgreSQL away: what waits stays held (and its offset with it) until a tick succeeds.
            log.warning("parking failed", extra={"reason": str(exc) or type(exc).__name__})

    async def _shut_down(self, committer: asyncio.Task[None]) -> None:
        consumer = self._subscriber.consumer
        if consumer is not None:
            consumer.pause(*consumer.assignment())
        await self._park(self._parking.park_held(older_than=self._park_after))
        await self._drain()
        committer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await committer
        await self._park(self._parking.park_held(older_than=0))
        await self.commit()
        self._may_commit = False
        await self._subscriber.stop()
        await self._tenants.stop(within=self._shutdown_grace + _STOP_MARGIN_SECONDS)

    async def _drain(self) -> None:
        """Give held writes up to the shutdown grace to settle."""
        deadline = time.monotonic() + self._shutdown_grace
        # Settling is spread over every tenant's tasks; polling the one counter is simplest.
        while self._inflight.unfinished() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_SECONDS)


def _placeholder(record: ConsumerRecord[Any, Any]) -> Delivery:
    """A delivery standing for a record being dead-lettered: only its offset counts."""
    return Delivery(
        token="",
        command_id="",
        tenant_id="",
        partition=(record.topic, record.partition),
        offset=record.offset,
        backfill=False,
        origin_commit_time=None,
        key=record.key,
        headers=tuple(record.headers or ()),
        timestamp_ms=record.timestamp,
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: CommandConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._consumer.revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._consumer.assigned([(tp.topic, tp.partition) for tp in assigned])

"""The commands consumed and not yet settled: the one owner of deliveries and their offsets.

The consumer registers every command it takes (:meth:`InFlight.received`), :class:`Settlement`
reports every delivery whose outcome is durable (:meth:`InFlight.settled`), parking reports the
deliveries made durable in PostgreSQL instead (:meth:`InFlight.parked`, :meth:`InFlight.released`),
and the committer asks which offsets may be committed. Nobody else reads or changes this state.

A delivery holds its partition's offset until it settles or is parked; a parked one (and one
loaded from the park) is remembered by its row id, which its last outcome deletes.

A delivery of a revoked partition (:meth:`InFlight.revoke`) belongs to the partition's new owner,
which replays it: its writes not sent yet are dropped (:meth:`InFlight.drop`), and one that
settles later never touches the offsets (the partition may be back here, with new deliveries at
the same offsets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from services.writer.batching import RecordWrite
from services.writer.commands import Delivery
from services.writer.offsets import OffsetTracker, Partition


class InFlight:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._offsets = OffsetTracker()
        # Insertion order is arrival order, which :meth:`held_since` relies on.
        self._deliveries: dict[str, Delivery] = {}
        self._arrived: dict[str, float] = {}
        # token -> record writes of that delivery still without an outcome
        self._remaining: dict[str, int] = {}
        # token -> row of writer_parked_commands that stands for it (its offset is released)
        self._parked: dict[str, int] = {}
        # tokens of deliveries whose partition was revoked
        self._revoked: set[str] = set()

    def received(self, delivery: Delivery, items: int, *, park_id: int | None = None) -> None:
        """A command arrived with ``items`` record writes (refused ones included) to settle: consumed
        from Kafka (holding its offset), or loaded from the park row ``park_id``."""
        if park_id is None:
            self._offsets.seen(delivery.partition, delivery.offset, items)
        if items > 0:
            self._deliveries[delivery.token] = delivery
            self._arrived[delivery.token] = self._clock()
            self._remaining[delivery.token] = items
            if park_id is not None:
                self._parked[delivery.token] = park_id

    def deliveries_of(self, write: RecordWrite) -> list[Delivery]:
        """The deliveries folded into ``write`` that are still unsettled, oldest first."""
        return [d for token in dict.fromkeys(write.all_command_ids) if (d := self._deliveries.get(token)) is not None]

    def latest_delivery(self, write: RecordWrite) -> Delivery:
        """The delivery of the latest command folded into ``write``: its values are the ones sent."""
        return self._deliveries[write.all_command_ids[-1]]

    def is_backfill(self, write: RecordWrite) -> bool:
        """Whether every command still unsettled in ``write`` is backfill (calls then yield to live ones)."""
        return all(d.backfill for d in self.deliveries_of(write))

    def settled(self, delivery: Delivery) -> int | None:
        """One record write of ``delivery`` has its outcome produced durably. Returns the park row
        that stood for the delivery once its last write has settled (the caller deletes it)."""
        token = delivery.token
        if token not in self._parked and token not in self._revoked:
            self._offsets.done(delivery.partition, delivery.offset)
        return self._finished(token)

    def _finished(self, token: str) -> int | None:
        left = self._remaining.get(token, 0) - 1
        if left > 0:
            self._remaining[token] = left
            return None
        self._remaining.pop(token, None)
        self._deliveries.pop(token, None)
        self._arrived.pop(token, None)
        self._revoked.discard(token)
        return self._parked.pop(token, None)

    def revoke(self, partitions: Collection[Partition]) -> None:
        """``partitions`` were revoked: their deliveries now belong to the new owner (module doc)."""
        lost = set(partitions)
        self._revoked.update(token for token, d in self._deliveries.items() if d.partition in lost)

    def revoked(self, write: RecordWrite) -> bool:
        """Whether ``write`` carries a delivery of a revoked partition (a record's commands all
        come from one partition, so then all of them do)."""
        return any(token in self._revoked for token in write.all_command_ids)

    def drop(self, write: RecordWrite) -> None:
        """``write`` of a revoked partition will not be sent here: forget it, offsets and park rows
        untouched (the new owner replays the commands, or loads their rows)."""
        for token in dict.fromkeys(write.all_command_ids):
            if token in self._revoked:
                self._finished(token)

    def held_since(self, moment: float) -> list[Delivery]:
        """Deliveries that arrived from Kafka before ``moment`` and still hold their offset, oldest first."""
        held = []
        for token, arrived in self._arrived.items():
            if arrived >= moment:
                break
            if token not in self._parked and token not in self._revoked:
                held.append(self._deliveries[token])
        return held

    def parked(self, deliveries: Iterable[tuple[Delivery, int]]) -> list[int]:
        """``deliveries`` (with their park rows) stay in memory, but no longer hold their offsets.
        Returns the rows of those that settled while their row was being written (to delete)."""
        stale = []
        for delivery, park_id in deliveries:
            token = delivery.token
            if token in self._revoked:
                continue  # revoked meanwhile: the row is the new owner's to load
            if token in self._remaining and token not in self._parked:
                self._offsets.done(delivery.partition, delivery.offset, self._remaining[token])
                self._parked[token] = park_id
            else:
                stale.append(park_id)
        return stale

    def waiting(self, delivery: Delivery) -> None:
        """``delivery`` waits to be parked before its tenant sees it: it holds its offset meanwhile."""
        self._offsets.seen(delivery.partition, delivery.offset, 1)

    def released(self, deliveries: Iterable[Delivery]) -> None:
        """Waiting ``deliveries`` are parked now: their offsets may move on."""
        for delivery in deliveries:
            self._offsets.done(delivery.partition, delivery.offset)

    def park_ids(self) -> set[int]:
        """The park rows whose commands are in memory here (never loaded twice)."""
        return set(self._parked.values())

    def committable(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """The positions of ``partitions`` that moved since they were last committed."""
        return {p: o for p, o in self._offsets.committable().items() if p in partitions}

    def committed(self, positions: dict[Partition, int]) -> None:
        self._offsets.committed(positions)

    def forget(self, partitions: list[Partition]) -> None:
        """Partitions this consumer lost: their commands are replayed by the new owner."""
        self._offsets.forget(partitions)

    def unfinished(self) -> int:
        """Record writes consumed on the partitions still owned, neither settled nor parked."""
        return self._offsets.unfinished()

"""The commands consumed and not yet settled: the one owner of deliveries and their offsets.

The consumer registers every command it takes (:meth:`InFlight.received`), :class:`Settlement`
reports every delivery whose outcome is durable (:meth:`InFlight.settled`), and the committer
asks which offsets may be committed. Nobody else reads or changes this state.
"""

from __future__ import annotations

from collections.abc import Collection

from services.writer.batching import RecordWrite
from services.writer.commands import Delivery
from services.writer.offsets import OffsetTracker, Partition


class InFlight:
    def __init__(self) -> None:
        self._offsets = OffsetTracker()
        self._deliveries: dict[str, Delivery] = {}
        # token -> record writes of that delivery still without an outcome
        self._remaining: dict[str, int] = {}

    def received(self, delivery: Delivery, items: int) -> None:
        """A command was consumed with ``items`` record writes (refused ones included) to settle."""
        self._offsets.seen(delivery.partition, delivery.offset, items)
        if items > 0:
            self._deliveries[delivery.token] = delivery
            self._remaining[delivery.token] = items

    def deliveries_of(self, write: RecordWrite) -> list[Delivery]:
        """The deliveries folded into ``write`` that are still unsettled, oldest first."""
        return [d for token in dict.fromkeys(write.all_command_ids) if (d := self._deliveries.get(token)) is not None]

    def latest_delivery(self, write: RecordWrite) -> Delivery:
        """The delivery of the latest command folded into ``write``: its values are the ones sent."""
        return self._deliveries[write.all_command_ids[-1]]

    def is_backfill(self, write: RecordWrite) -> bool:
        """Whether every command still unsettled in ``write`` is backfill (calls then yield to live ones)."""
        return all(d.backfill for d in self.deliveries_of(write))

    def settled(self, delivery: Delivery) -> None:
        """One record write of ``delivery`` has its outcome produced durably."""
        self._offsets.done(delivery.partition, delivery.offset)
        left = self._remaining.get(delivery.token, 0) - 1
        if left > 0:
            self._remaining[delivery.token] = left
        else:
            self._remaining.pop(delivery.token, None)
            self._deliveries.pop(delivery.token, None)

    def committable(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """The positions of ``partitions`` that moved since they were last committed."""
        return {p: o for p, o in self._offsets.committable().items() if p in partitions}

    def committed(self, positions: dict[Partition, int]) -> None:
        self._offsets.committed(positions)

    def forget(self, partitions: list[Partition]) -> None:
        """Partitions this consumer lost: their commands are replayed by the new owner."""
        self._offsets.forget(partitions)

    def unfinished(self) -> int:
        """Record writes consumed on the partitions still owned and not settled yet."""
        return self._offsets.unfinished()

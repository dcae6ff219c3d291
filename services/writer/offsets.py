"""Which consumed offsets may be committed, when records finish out of order. Pure: no I/O.

The writer consumes commands as fast as it can batch them and finishes them whenever Salesforce
answers, tenant by tenant, so a later offset often finishes before an earlier one. Kafka only
stores one position per partition, meaning "everything before this is done", so the position
committed is the lowest offset still unfinished (or one past the highest seen when nothing is
pending). A crash then replays at most the unfinished commands and the finished ones after
them; replays are harmless because creates are upserts on the external id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Partition = tuple[str, int]


@dataclass
class OffsetTracker:
    # partition -> offset -> items (record writes) of that command still without an outcome
    _pending: dict[Partition, dict[int, int]] = field(default_factory=dict)
    # partition -> one past the highest offset seen
    _next: dict[Partition, int] = field(default_factory=dict)
    _committed: dict[Partition, int] = field(default_factory=dict)

    def seen(self, partition: Partition, offset: int, items: int) -> None:
        """A command at ``offset`` arrived with ``items`` record writes to settle."""
        if items > 0:
            pending = self._pending.setdefault(partition, {})
            pending[offset] = pending.get(offset, 0) + items
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def done(self, partition: Partition, offset: int, items: int = 1) -> None:
        """``items`` record writes of the command at ``offset`` have their outcome produced."""
        pending = self._pending.get(partition)
        if pending is None or offset not in pending:
            return  # the partition was revoked meanwhile; its new owner replays it
        left = pending[offset] - items
        if left > 0:
            pending[offset] = left
        else:
            del pending[offset]

    def position(self, partition: Partition) -> int | None:
        """The offset that may be committed for ``partition`` (None before anything was seen)."""
        if partition not in self._next:
            return None
        pending = self._pending.get(partition)
        return min(pending) if pending else self._next[partition]

    def committable(self) -> dict[Partition, int]:
        """Positions that moved since they were last committed."""
        moved = {}
        for partition in self._next:
            position = self.position(partition)
            if position is not None and self._committed.get(partition) != position:
                moved[partition] = position
        return moved

    def committed(self, positions: dict[Partition, int]) -> None:
        self._committed.update(positions)

    def forget(self, partitions: list[Partition]) -> None:
        """Partitions this consumer lost: their records are replayed by the new owner."""
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)

    def unfinished(self) -> int:
        return sum(sum(p.values()) for p in self._pending.values())

"""Which writes a newer one already superseded. Pure: no I/O.

The conflict-resolver numbers each link's commands 1, 2, 3… in the transaction that emits them,
so a replayed input republishes the same number and a later command always has a higher one.
The writer keeps the highest version it applied per link (:class:`AppliedVersions`, raised in
the transaction that logs the outcome). A write at or below it is a replay (a crash before the
offset commit, a rebalance, a duplicate delivery, a dead letter replayed after a newer write):
sending it would put back a value Salesforce has since moved past, and its tagged echo would
then be dropped as Duplex's own, leaving the two sides silently different. Such a write is
settled as superseded, without a call.

Version 0 is a command from a producer that does not number them: it is always sent, as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from services.writer.batching import RecordWrite


class AppliedVersions(Protocol):
    async def applied(self, tenant_id: str, link_ids: Collection[str]) -> Mapping[str, int]:
        """The highest version applied of each of ``link_ids`` that has one."""
        ...


def superseded(write: RecordWrite, applied: Mapping[str, int]) -> bool:
    """Whether ``write`` is at or below the version already applied to its link."""
    return write.version > 0 and write.version <= applied.get(write.link_id, 0)


def highest(writes: Iterable[RecordWrite]) -> dict[str, int]:
    """The highest version of each link among ``writes`` (unversioned writes left out)."""
    versions: dict[str, int] = {}
    for write in writes:
        if write.version > 0:
            versions[write.link_id] = max(write.version, versions.get(write.link_id, 0))
    return versions

"""Which writes a newer one already superseded. Pure: no I/O.

The conflict-resolver numbers each link's commands 1, 2, 3… in the transaction that emits them,
so a replayed input republishes the same number and a later command always has a higher one.
The writer keeps the highest version it applied per link (:class:`AppliedVersions`, raised in
the transaction that logs the outcome). A write at or below it is a replay (a crash before the
offset commit, a rebalance, a duplicate delivery, a dead letter replayed after a newer write):
sending it would put back a value Salesforce has since moved past, and its tagged echo would
then be dropped as Duplex's own, leaving the two sides silently different. Such a write is
settled as superseded, without a call. A replay folded into a newer write by coalescing keeps its
fields' versions, so they are left out of the newer write once theirs is applied (:func:`unapplied`).

Version 0 is a command from a producer that does not number them: it is always sent, as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from services.writer.batching import RecordWrite


class AppliedVersions(Protocol):
    async def applied(self, tenant_id: str, link_ids: Collection[str]) -> Mapping[str, int]:
        """The highest version applied of each of ``link_ids`` that has one."""
        ...


def superseded(write: RecordWrite, applied: Mapping[str, int]) -> bool:
    """Whether ``write`` is at or below the version already applied to its link."""
    return write.version > 0 and write.version <= applied.get(write.link_id, 0)


def unapplied(write: RecordWrite, applied: Mapping[str, int]) -> RecordWrite | None:
    """``write`` without the fields a replayed older write folded into it, whose version is already
    applied (a newer Salesforce edit may have followed it); None when it is superseded outright."""
    if superseded(write, applied):
        return None
    done = applied.get(write.link_id, 0)
    stale = {name for name in write.fields if 0 < write.version_of(name) <= done}
    if not stale:
        return write
    if stale == set(write.fields) and write.fields:
        return None
    return replace(write, fields={name: value for name, value in write.fields.items() if name not in stale})


def highest(writes: Iterable[RecordWrite]) -> dict[str, int]:
    """The highest version of each link among ``writes`` (unversioned writes left out)."""
    versions: dict[str, int] = {}
    for write in writes:
        if write.version > 0:
            versions[write.link_id] = max(write.version, versions.get(write.link_id, 0))
    return versions

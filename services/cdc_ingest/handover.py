"""The hand-over from a backfill to the stream: stream changes a snapshot already carried stay here.

After a tenant's first backfills the stream starts at the earliest retained event and skips those
committed before the backfills began, less ``poll_overlap`` (that start is cdc-ingest's clock, and
Salesforce's commit times are another). Inside that overlap every record created or edited shortly
before the backfill came twice, and most backfills follow a bulk load: once as its snapshot, and
again as each of its stream events, every one crossing mapping and the conflict-resolver only to be
found stale there.

A backfill's reads all begin after its first call (the count that picks REST or Bulk) was
answered, so a transaction Salesforce committed before that answer's ``Date`` (its own clock,
whole seconds) is in every snapshot the backfill reads. A stream change of a record a snapshot
carried, committed before that moment, adds nothing: :meth:`Snapshots.covers` says so and the
stream drops it. Not a snapshot's SystemModstamp: a transaction's commit time trails the modstamp
it set, so the change that set it would look newer than the snapshot holding it. And never a
change tagged with Duplex's own client: a snapshot carries no tag, and only the tagged echo tells
the conflict-resolver that a write of ours landed (without it the write would stay in flight, and
the next Salesforce edit of the field would be taken for a conflict).

This only saves work: a record not remembered (past the limit, or published before a restart) is
published as before, and consumers still tell a stale change from a new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from services.cdc_ingest.contract import RecordChanged

# About 100 bytes an entry, some 20 MB at most; a larger backfill hands the rest over the old way.
LIMIT = 200_000


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Snapshots:
    """The records each backfill carried, and when (by Salesforce's clock) its reads began.

    ``own_client`` is the tenant's ``call_options_client``, the tag of Duplex's writes.
    """

    def __init__(self, own_client: str, *, limit: int = LIMIT) -> None:
        self._own_client = own_client
        self._limit = limit
        self._records: set[str] = set()
        # Object -> epoch ms before which every commit is in its snapshots.
        self._reads_from: dict[str, int] = {}

    def reading(self, entity: str, server_time: datetime | None) -> None:
        """A backfill of ``entity`` starts reading; ``server_time`` is Salesforce's clock before its
        first read (None when the answer carried no Date: then nothing of it is covered)."""
        if server_time is not None:
            # The earliest: records read by an earlier backfill of the object stay covered only so far.
            at = _millis(server_time)
            self._reads_from[entity] = min(at, self._reads_from.get(entity, at))

    def remember(self, snapshots: Iterable[RecordChanged]) -> None:
        """Snapshots just acknowledged on crm-changes."""
        for change in snapshots:
            if change.object_type in self._reads_from and len(self._records) < self._limit:
                self._records.add(change.record_id)

    def covers(self, change: RecordChanged) -> bool:
        """Whether a published snapshot already holds what ``change`` (a stream change) brings."""
        if not self._records or change.origin_client == self._own_client:
            return False
        committed = change.origin_commit_time.ToMilliseconds()
        if committed >= max(self._reads_from.values()):
            # The stream has reached the last backfill's reads (it delivers in commit order):
            # nothing remembered can cover what comes next.
            self._records.clear()
            self._reads_from.clear()
            return False
        reads_from = self._reads_from.get(change.object_type)
        return reads_from is not None and committed < reads_from and change.record_id in self._records

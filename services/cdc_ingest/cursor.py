"""The (SystemModstamp, Id) tuple cursor and the SOQL that reads after it. Pure.

Polling on ``SystemModstamp > last`` alone skips records: several records committed in one
transaction share one timestamp, and a page limit can end in the middle of them (the bug other
sync tools have). Reading strictly after the *tuple* ``(SystemModstamp, Id)``, ordered by both,
never skips and never loops. Each run of a poll also starts ``overlap`` before the saved cursor,
because a record's SystemModstamp is the time its transaction began, and a slow transaction can
commit after a later one was already read; the re-read duplicates are dropped downstream by
event id (and mostly in-process, see :class:`RecentlyEmitted`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.cdc_ingest.typed import COMPOUND_TYPES, FieldInfo

SYSTEM_FIELDS = ("Id", "SystemModstamp", "IsDeleted")
# Ids named in one query by id (by_ids_query, merge_losers_query); more are read in chunks of this.
IDS_PER_QUERY = 200


@dataclass(frozen=True, order=True)
class Cursor:
    modstamp: datetime
    record_id: str = ""

    def encode(self) -> str:
        """Text form, carried as the RecordChanged source position."""
        return f"{soql_datetime(self.modstamp)}|{self.record_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        stamp, _, record_id = text.partition("|")
        return cls(datetime.fromisoformat(stamp.replace("Z", "+00:00")), record_id)

    def minus(self, overlap: timedelta) -> Cursor:
        """Where a new run starts: ``overlap`` earlier, every Id at that instant included."""
        return Cursor(self.modstamp - overlap, "")


def soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal in UTC with milliseconds: ``2024-05-01T12:00:00.000Z``."""
    utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def selectable_fields(fields: Iterable[FieldInfo]) -> list[str]:
    """Every readable field but compound parents (their components are selected instead)."""
    names = [f.name for f in fields if f.type not in COMPOUND_TYPES]
    for system in reversed(SYSTEM_FIELDS):
        if system not in names:
            names.insert(0, system)
    return names


def after_clause(after: Cursor | None) -> str:
    """The WHERE condition for "strictly after ``after``" (empty: from the beginning)."""
    if after is None:
        return ""
    stamp = soql_datetime(after.modstamp)
    if not after.record_id:
        return f"SystemModstamp >= {stamp}"
    return f"(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > {_quote(after.record_id)}))"


def read_after_query(
    entity: str, fields: Iterable[str], after: Cursor | None, limit: int, where: str | None = None
) -> str:
    """One page of records strictly after ``after`` (and matching ``where``, if given), in cursor order."""
    conditions = [c for c in (after_clause(after), where) if c]
    combined = " AND ".join(f"({c})" for c in conditions) if len(conditions) > 1 else "".join(conditions)
    return (
        f"SELECT {', '.join(fields)} FROM {entity}"
        + (f" WHERE {combined}" if combined else "")
        + f" ORDER BY SystemModstamp, Id LIMIT {limit}"
    )


def by_ids_query(entity: str, fields: Iterable[str], record_ids: Iterable[str]) -> str:
    ids = ", ".join(_quote(i) for i in record_ids)
    return f"SELECT {', '.join(fields)} FROM {entity} WHERE Id IN ({ids})"


def merge_losers_query(entity: str, record_ids: Iterable[str]) -> str:
    """The deleted records among ``record_ids`` with their MasterRecordId (set when a merge lost them)."""
    ids = ", ".join(_quote(i) for i in record_ids)
    return f"SELECT Id, MasterRecordId FROM {entity} WHERE Id IN ({ids}) AND IsDeleted = true"


class RecentlyEmitted:
    """(record, SystemModstamp) pairs already emitted inside the overlap window.

    The overlap re-reads the same records on every run; this keeps them off the topic unless
    they changed since. Entries older than the window are forgotten, so memory stays bounded.
    """

    def __init__(self, overlap: timedelta) -> None:
        self._overlap = overlap
        self._seen: dict[str, datetime] = {}

    def is_new(self, record_id: str, modstamp: datetime) -> bool:
        return self._seen.get(record_id) != modstamp

    def add(self, record_id: str, modstamp: datetime) -> None:
        self._seen[record_id] = modstamp

    def forget_before(self, cursor: Cursor) -> None:
        horizon = cursor.modstamp - self._overlap
        self._seen = {rid: stamp for rid, stamp in self._seen.items() if stamp >= horizon}

"""Records read from Salesforce (SOQL rows, Bulk CSV rows) as changes, and the paged read after a
tuple cursor that repairs, polls and REST backfills share.

A record Duplex cannot carry (a value beyond what its events hold) is refused alone, as the stream
refuses an event: the paged read dead-letters a pointer to it, writes an ``UNREADABLE_RECORD``
row to the sync log and moves on.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from services.cdc_ingest.contract import RecordChanged
from services.cdc_ingest.cursor import (
    IDS_PER_QUERY,
    Cursor,
    RecentlyEmitted,
    by_ids_query,
    read_after_query,
    selectable_fields,
)
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.rejection import UNDECODABLE, Rejection, UndecodableError, reading
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.translate import EVENT_ID_NAMESPACE, read_change
from services.cdc_ingest.typed import FieldTypes, typed, typed_from_csv
from services.common.change import ChangeKind

_NOT_VALUES = frozenset({"attributes", "Id", "IsDeleted"})

# Called after each page is acknowledged, with the page's last cursor and the count published so far.
SaveProgress = Callable[[Cursor, int], Awaitable[None]]


class RecordReader:
    """One tenant's reads of whole records, published through its publisher."""

    def __init__(self, *, tenant_id: str, rest: SalesforceRest, publisher: Publisher, page_size: int) -> None:
        self.tenant_id = tenant_id
        self._rest = rest
        self._publisher = publisher
        self._page_size = page_size

    async def select(self, entity: str) -> list[str]:
        """The fields a read of ``entity`` selects."""
        return selectable_fields((await self._rest.fields(entity)).values())

    def row_change(
        self,
        entity: str,
        row: dict[str, Any],
        types: FieldTypes,
        kind: ChangeKind,
        channel: str,
        missing_since: datetime | None = None,
    ) -> RecordChanged:
        """A SOQL row as a change (a DELETE when the row is in the recycle bin).

        Raises UndecodableError when the row holds a value a change cannot carry.
        """
        with reading("record"):
            modstamp = typed("datetime", row["SystemModstamp"])
            assert isinstance(modstamp, datetime)
            record_id = str(row["Id"])
            if row.get("IsDeleted") in (True, "true"):
                kind = ChangeKind.DELETE
            values = {
                name: typed(types[name].type if name in types else None, value)
                for name, value in row.items()
                if name not in _NOT_VALUES
            }
            return read_change(
                tenant_id=self.tenant_id,
                entity=entity,
                record_id=record_id,
                values=values,
                modstamp=modstamp,
                kind=kind,
                cursor=Cursor(modstamp, record_id).encode(),
                channel=f"{channel}:{entity}",
                missing_since=missing_since,
            )

    def csv_change(self, entity: str, row: dict[str, str], types: FieldTypes) -> RecordChanged:
        """A Bulk 2.0 result row as a snapshot; UndecodableError when it holds a value a change cannot carry."""
        with reading("record"):
            values = {
                name: typed_from_csv(types[name].type if name in types else None, text)
                for name, text in row.items()
                if name not in _NOT_VALUES
            }
            modstamp = values.get("SystemModstamp")
            assert isinstance(modstamp, datetime), f"{entity} {row.get('Id')}: no SystemModstamp"
            record_id = row["Id"]
            return read_change(
                tenant_id=self.tenant_id,
                entity=entity,
                record_id=record_id,
                values=values,
                modstamp=modstamp,
                kind=ChangeKind.SNAPSHOT,
                cursor=Cursor(modstamp, record_id).encode(),
                channel=f"backfill:{entity}",
            )

    async def carried(
        self, entity: str, row: Mapping[str, Any], source: str, convert: Callable[[], RecordChanged]
    ) -> RecordChanged | None:
        """``convert()``, or None when the row holds a value no change can carry: that record is then
        refused alone (a pointer, not the row, to the dead-letter topic: the record is still in
        Salesforce to be read again, and a sync-log row)."""
        try:
            return convert()
        except UndecodableError as error:
            await self._publisher.reject(unreadable_record(entity, row, error, source), b"")
            return None

    async def read_ids(
        self,
        entity: str,
        record_ids: Iterable[str],
        source: str,
        *,
        kind: ChangeKind,
        stamp: datetime,
        tag: str,
        event_salt: str | None = None,
    ) -> int:
        """Re-read records by id (queryAll, so deletes show) and publish their current state as
        ``kind``: a DELETE for one in the recycle bin, and for one gone even from there (dated
        ``stamp``, its cursor ``tag``). ``stamp`` also dates the records read (``missing_since``).

        ``event_salt`` gives the changes event ids of their own: a record re-read unchanged would
        otherwise carry the id of its last snapshot, which consumers already applied and skip.
        Returns the number of changes published.
        """
        fields = await self.select(entity)
        types = await self._rest.fields(entity)
        published = 0
        wanted = list(dict.fromkeys(record_ids))
        for start in range(0, len(wanted), IDS_PER_QUERY):
            chunk = wanted[start : start + IDS_PER_QUERY]
            found: dict[str, dict[str, Any]] = {}
            async for read in self._rest.query(by_ids_query(entity, fields, chunk), all_rows=True):
                found[str(read["Id"])] = read
            changes = []
            for record_id in chunk:
                row = found.get(record_id)
                if row is None:
                    # Gone even from the recycle bin: all that is left to say is that it was deleted.
                    changes.append(
                        read_change(
                            tenant_id=self.tenant_id,
                            entity=entity,
                            record_id=record_id,
                            values={},
                            modstamp=stamp,
                            kind=ChangeKind.DELETE,
                            cursor=tag,
                            channel=f"{source}:{entity}",
                        )
                    )
                    continue
                convert = functools.partial(self.row_change, entity, row, types, kind, source, stamp)
                change = await self.carried(entity, row, source, convert)
                if change is not None:
                    changes.append(change)
            if event_salt is not None:
                for change in changes:
                    change.event_id = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{event_salt}/{change.event_id}"))
            await self._publisher.publish(changes, source)
            published += len(changes)
        return published

    async def read_window(
        self,
        entity: str,
        start: Cursor | None,
        source: str,
        *,
        save: SaveProgress | None = None,
        recent: RecentlyEmitted | None = None,
        all_rows: bool = True,
        backfill: bool = False,
        missing_since: datetime | None = None,
        where: str | None = None,
    ) -> int:
        """Publish every record after ``start`` in (SystemModstamp, Id) order, page by page.

        ``save`` is called with the cursor and the count published so far after each page is
        acknowledged; ``missing_since`` dates the records read (see ``read_change``); ``where``
        narrows the read to a pair filter's records. Returns the number of changes published.
        """
        fields = await self.select(entity)
        types = await self._rest.fields(entity)
        cursor = start
        published = 0
        while True:
            soql = read_after_query(entity, fields, cursor, self._page_size, where)
            rows = [row async for row in self._rest.query(soql, all_rows=all_rows, backfill=backfill)]
            changes = []
            for row in rows:
                change = await self.carried(
                    entity,
                    row,
                    source,
                    functools.partial(self.row_change, entity, row, types, ChangeKind.SNAPSHOT, source, missing_since),
                )
                if change is None:
                    continue
                stamp = change.origin_commit_time.ToDatetime(tzinfo=UTC)
                if recent is None or recent.is_new(change.record_id, stamp):
                    changes.append(change)
                if recent is not None:
                    recent.add(change.record_id, stamp)
            await self._publisher.publish(changes, source)
            published += len(changes)
            if rows:
                last = rows[-1]
                last_stamp = typed("datetime", last["SystemModstamp"])
                assert isinstance(last_stamp, datetime)
                cursor = Cursor(last_stamp, str(last["Id"]))
                if save is not None:
                    await save(cursor, published)
            if len(rows) < self._page_size:
                return published


def unreadable_record(entity: str, row: Mapping[str, Any], error: UndecodableError, source: str) -> Rejection:
    """The rejection of a record read on ``source`` that no change can carry."""
    record_id = str(row.get("Id") or "")
    return Rejection(
        event="cdc.unreadable_record",
        code="UNREADABLE_RECORD",
        message=f"{entity} {record_id} read by {source} cannot be carried ({error}); "
        "a pointer to it is on the dead-letter topic and the read moved past it",
        detail={
            "object": entity,
            "record_id": record_id,
            "source": source,
            "error_type": error.error_type,
            "error": error.error,
        },
        origin={"object": entity, "record-id": record_id, "source": source},
        reason=UNDECODABLE,
        record_id=record_id,
    )

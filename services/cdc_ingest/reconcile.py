"""Reconciliation: Salesforce compared with what Duplex holds, window by window, and what differs
re-read and published, for the changes no event will ever report (an object deselected from CDC
for a while, events purged before they were read, tools that write around triggers).

How one object pair is reconciled
=================================
- *Windows*: the pair's Salesforce records (its filter pushed down) are read page by page in
  (SystemModstamp, Id) order with the tuple cursor polls use, selecting only the fields compared.
  Each page is a window. A record edited during the read moves past the cursor and is read again
  later; none is skipped.
- *What Duplex holds* for the same ids is the conflict-resolver's state: for each field, the
  Salesforce form of its current truth (:meth:`Store.held_values`). Compared are the rules that
  carry Salesforce's value to the app (``both`` or ``crm_to_app``); a value sent only to
  Salesforce is not Duplex's to repair from there.
- *Count and checksum*: each side of a window is summed up as its record count and a SHA-256 over
  every record's id and canonical values (:func:`window_sum`). Equal windows are done; in one that
  differs, each record is compared and those missing from Duplex or holding other values are
  re-read by id and published with event ids of the job's own (a value Duplex never applied would
  otherwise be skipped as already seen).
- *Records Duplex holds that Salesforce no longer returns* (deleted, merged away, gone from the
  recycle bin, or moved out of the filter) are re-read by id the same way: queryAll shows deletes,
  and one gone for good is published as deleted.

Published records take the normal path (mapping, conflict-resolver, writer), so a repair is
decided by the pair's policies like any change. Values compare as text (:func:`canonical`), so a
transform's change of type (a number kept as text) does not count as a difference; a value
Salesforce reformats after a write (say, a phone number) is published again each time, and the
conflict-resolver, finding nothing new in it, writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.cdc_ingest.cursor import Cursor, read_after_query
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.store import Store
from services.cdc_ingest.typed import FieldInfo, typed
from services.common.change import ChangeKind
from services.common.pair_filters import meets, pair_clause
from services.common.tenant_config import ObjectPair
from services.common.values import Value, is_blank

# Windows that differ are described in the job's result up to this many; the rest are counted.
DESCRIBED_WINDOWS = 20
# Records found to differ are named in the sync log and the result up to this many per job.
NAMED_RECORDS = 200

Progress = Callable[[int, int | None, dict[str, Any]], Awaitable[None]]


def canonical(value: Value) -> str:
    """A value as the text both sides agree on whatever its type: blanks are one, numbers are
    normalised (12.50 is 12.5, 5.0 is 5), times are UTC to the millisecond."""
    if is_blank(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return format(number.normalize(), "f") if number.is_finite() else str(number)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        # Salesforce keeps a multi-select's values in picklist order, the app in its own.
        return ";".join(sorted(set(value)))
    return str(value)


def record_digest(values: Mapping[str, str]) -> str:
    """One record's compared values (field -> canonical text) as a digest."""
    text = "\x1e".join(f"{name}\x1f{values[name]}" for name in sorted(values))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class WindowSum:
    count: int
    checksum: str


def window_sum(digests: Mapping[str, str]) -> WindowSum:
    """A window's record count and checksum: SHA-256 over its records' ids and digests in id order
    (so the same records give the same sum, whichever side listed them)."""
    hashed = hashlib.sha256()
    for record_id in sorted(digests):
        hashed.update(f"{record_id}:{digests[record_id]}\n".encode())
    return WindowSum(len(digests), hashed.hexdigest())


def differing(salesforce: Mapping[str, str], duplex: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Of a window's Salesforce records: those Duplex does not hold, and those it holds with other values."""
    missing = [i for i in salesforce if i not in duplex]
    changed = [i for i in salesforce if i in duplex and duplex[i] != salesforce[i]]
    return missing, changed


def _type(described: Mapping[str, FieldInfo], name: str) -> str | None:
    info = described.get(name)
    return info.type if info is not None else None


def compared_fields(pair: ObjectPair, described: Mapping[str, FieldInfo]) -> dict[str, str]:
    """Salesforce field (as describe names it) -> app field, for each rule that carries Salesforce's
    value to the app and whose field the object still has."""
    by_lower = {name.lower(): name for name in described}
    compared: dict[str, str] = {}
    for rule in pair.fields:
        name = by_lower.get(rule.salesforce.lower())
        if name is not None and rule.classify is None and pair.direction_of(rule).to_app:
            compared[name] = rule.app
    return compared


@dataclass
class Findings:
    """What a reconcile found so far (the job's result)."""

    read: int = 0
    windows: int = 0
    windows_differing: int = 0
    salesforce_records: int = 0
    duplex_records: int = 0
    missing_in_duplex: int = 0
    values_differ: int = 0
    missing_in_salesforce: int = 0
    published: int = 0
    described: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def as_result(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "windows": self.windows,
            "windowsDiffering": self.windows_differing,
            "salesforceRecords": self.salesforce_records,
            "duplexRecords": self.duplex_records,
            "missingInDuplex": self.missing_in_duplex,
            "valuesDiffer": self.values_differ,
            "missingInSalesforce": self.missing_in_salesforce,
            "published": self.published,
            "differingWindows": self.described,
            "differingRecords": self.records,
        }


class Reconciler:
    def __init__(
        self,
        *,
        tenant_id: str,
        rest: SalesforceRest,
        reader: RecordReader,
        store: Store,
        page_size: int,
        settle: timedelta,
    ) -> None:
        self.tenant_id = tenant_id
        self._rest = rest
        self._reader = reader
        self._store = store
        self._page_size = page_size
        self._settle = settle

    async def reconcile(self, pair: ObjectPair, job_id: int, progress: Progress) -> Findings:
        entity = pair.salesforce.object
        described = await self._rest.fields(entity)
        compared = compared_fields(pair, described)
        conditions = pair.filter.salesforce if pair.filter is not None else ()
        where = pair_clause(pair)
        estimated = (await self._rest.count(entity, where)).records
        # What Duplex holds and Salesforce has not returned yet; what is left at the end is gone.
        unseen = await self._store.linked_records(self.tenant_id, pair.name)
        found = Findings(duplex_records=len(unseen))
        salt = f"reconcile/{job_id}"
        # A record edited this recently may still have its change event on the way: the next
        # reconcile compares it, rather than this one re-reading what is about to arrive anyway.
        settled = datetime.now(UTC) - self._settle
        named = {"Id", "SystemModstamp", *compared, *(c.field for c in conditions)}
        select = ["Id", "SystemModstamp", *sorted(n for n in named if n not in ("Id", "SystemModstamp"))]
        cursor: Cursor | None = None
        while True:
            soql = read_after_query(entity, select, cursor, self._page_size, where)
            rows = [row async for row in self._rest.query(soql, backfill=True)]
            found.read += len(rows)
            window: dict[str, str] = {}
            for row in rows:
                record_id = str(row["Id"])
                unseen.discard(record_id)
                values = {name: typed(_type(described, name), row.get(name)) for name in named}
                stamp = values["SystemModstamp"]
                assert isinstance(stamp, datetime)
                # Mapping leaves records outside the structured conditions unsynced: not Duplex's.
                if stamp <= settled and meets(conditions, values):
                    window[record_id] = record_digest({name: canonical(values[name]) for name in compared})
            if window:
                await self._compare(pair, compared, window, rows, found, salt)
            if rows:
                last = rows[-1]
                stamp = typed("datetime", last["SystemModstamp"])
                assert isinstance(stamp, datetime)
                cursor = Cursor(stamp, str(last["Id"]))
            await progress(found.read, estimated, found.as_result())
            if len(rows) < self._page_size:
                break
        gone = sorted(unseen)
        if gone:
            found.missing_in_salesforce = len(gone)
            self._name(found, gone, "missing in Salesforce")
            found.published += await self._reader.read_ids(
                entity, gone, "reconcile", kind=ChangeKind.SNAPSHOT, stamp=datetime.now(UTC), tag=salt, event_salt=salt
            )
        await self._log(pair, found)
        return found

    async def _compare(
        self,
        pair: ObjectPair,
        compared: Mapping[str, str],
        window: dict[str, str],
        rows: list[dict[str, Any]],
        found: Findings,
        salt: str,
    ) -> None:
        held, outside = await self._store.held_values(self.tenant_id, pair.name, list(window))
        # Records that left the pair's filter are deliberately not synced: on neither side.
        for record_id in outside:
            window.pop(record_id, None)
        duplex = {
            record_id: record_digest({name: canonical(values.get(app)) for name, app in compared.items()})
            for record_id, values in held.items()
        }
        found.windows += 1
        found.salesforce_records += len(window)
        ours, theirs = window_sum(window), window_sum(duplex)
        if ours == theirs:
            return
        found.windows_differing += 1
        missing, changed = differing(window, duplex)
        found.missing_in_duplex += len(missing)
        found.values_differ += len(changed)
        if len(found.described) < DESCRIBED_WINDOWS:
            found.described.append(
                {
                    "from": str(rows[0]["SystemModstamp"]),
                    "to": str(rows[-1]["SystemModstamp"]),
                    "salesforce": {"count": ours.count, "checksum": ours.checksum},
                    "duplex": {"count": theirs.count, "checksum": theirs.checksum},
                }
            )
        self._name(found, missing, "missing in Duplex")
        self._name(found, changed, "values differ")
        found.published += await self._reader.read_ids(
            pair.salesforce.object,
            [*missing, *changed],
            "reconcile",
            kind=ChangeKind.SNAPSHOT,
            stamp=datetime.now(UTC),
            tag=salt,
            event_salt=salt,
        )

    @staticmethod
    def _name(found: Findings, record_ids: Iterable[str], why: str) -> None:
        for record_id in record_ids:
            if len(found.records) >= NAMED_RECORDS:
                return
            found.records.append({"salesforceId": record_id, "why": why})

    async def _log(self, pair: ObjectPair, found: Findings) -> None:
        for named in found.records:
            await self._store.log_event(
                self.tenant_id,
                "reconcile.record_differs",
                message=f"{pair.salesforce.object} {named['salesforceId']}: {named['why']}; re-read and published",
                record_id=named["salesforceId"],
                detail={"object_pair": pair.name, **named},
            )
        differences = found.missing_in_duplex + found.values_differ + found.missing_in_salesforce
        await self._store.log_event(
            self.tenant_id,
            "reconcile.completed",
            message=f"reconciled {pair.name}: {found.salesforce_records} Salesforce record(s) in {found.windows}"
            f" window(s), {differences} difference(s), {found.published} change(s) published",
            detail={"object_pair": pair.name, **found.as_result()},
        )

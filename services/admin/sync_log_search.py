"""A tenant's sync log, searched: rows by status, event, code, object pair, record and time, newest
first a page at a time; and one record's timeline, oldest first.

A record is named by any of its ids: the app's, Salesforce's (15 or 18 characters) or its link's.
Its rows are those of its links (a record has one per object pair it is synced in; a Lead
conversion re-points one) and those naming it without a link (a change refused before mapping
linked it). The writer logs successful writes once per batch, without a link: a timeline shows a
record's write only when it failed.

Pages are ordered by time, then id, newest first; a cursor is the position of a page's last row,
so rows appended meanwhile never shift the next page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from services.common.db import Connection
from services.common.salesforce_ids import is_valid, to18

# What each kind of row says about a record: what users filter the log by.
STATUS_EVENTS: Final[Mapping[str, frozenset[str]]] = {
    "succeeded": frozenset({"change.resolved", "record.created", "write.succeeded"}),
    "rejected": frozenset(
        {"change.rejected", "write.rejected", "cdc.undecodable", "cdc.unreadable_record", "cdc.record_too_large"}
    ),
    "skipped": frozenset({"change.filtered", "change.left_filter", "change.dropped", "write.superseded"}),
    "conflict": frozenset({"conflict.decided"}),
    # Counted per batch since migration 0018's release; a row per echo before.
    "echo": frozenset({"echoes.dropped", "echo.dropped"}),
}
# Everything else (pairs quarantined, connections, budgets, backfills, links re-pointed) is news
# about the tenant, not an outcome of a record.
INFO: Final = "info"
STATUSES: Final = (*STATUS_EVENTS, INFO)
_KNOWN_EVENTS = sorted(frozenset().union(*STATUS_EVENTS.values()))
_COLUMNS = "id, at, service, event, link_id, record_id, code, message, detail"


def status_of(event: str) -> str:
    return next((status for status, events in STATUS_EVENTS.items() if event in events), INFO)


class CursorError(ValueError):
    """A cursor this API did not hand out."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last row's time and id."""

    at: datetime
    id: int

    def cursor(self) -> str:
        return base64.urlsafe_b64encode(f"{self.at.isoformat()}|{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def of_cursor(cls, cursor: str) -> Position:
        try:
            at, _, row_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
            return cls(datetime.fromisoformat(at), int(row_id))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise CursorError("not a cursor from a previous page; start without one") from None


@dataclass(frozen=True)
class LogQuery:
    """Rows matching every given criterion (within one, any of its values)."""

    statuses: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    pair: str | None = None
    record: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class LogRow:
    id: int
    at: datetime
    service: str
    event: str
    link_id: str | None
    record_id: str | None
    code: str | None
    message: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return status_of(self.event)

    @property
    def position(self) -> Position:
        return Position(self.at, self.id)


@dataclass(frozen=True)
class RecordLink:
    """One of a record's links: its ids on both sides in one object pair."""

    link_id: str
    pair: str
    app_record_id: str | None
    salesforce_id: str | None


def _row(record: Any) -> LogRow:
    detail = record["detail"]
    return LogRow(
        id=record["id"],
        at=record["at"],
        service=record["service"],
        event=record["event"],
        link_id=record["link_id"],
        record_id=record["record_id"],
        code=record["code"],
        message=record["message"],
        detail=json.loads(detail) if isinstance(detail, str) else detail,
    )


def record_ids(record: str) -> list[str]:
    """The ids ``record`` may be stored under: itself, and the 18-character form of a Salesforce id."""
    return sorted({record, to18(record)}) if is_valid(record) else [record]


async def links_of(db: Connection, tenant_id: str, record: str) -> list[RecordLink]:
    """The links naming ``record`` by any of its ids, by pair."""
    ids = record_ids(record)
    rows = await db.fetch(
        "SELECT link_id, object_pair, app_record_id, crm_record_id FROM links WHERE tenant_id = $1"
        " AND (link_id = ANY($2::text[]) OR app_record_id = ANY($2::text[]) OR crm_record_id = ANY($2::text[]))"
        " ORDER BY object_pair, link_id",
        tenant_id,
        ids,
    )
    return [RecordLink(r["link_id"], r["object_pair"], r["app_record_id"], r["crm_record_id"]) for r in rows]


def _record_clause(args: list[Any], record: str, links: Sequence[RecordLink]) -> str:
    ids = set(record_ids(record))
    ids |= {i for link in links for i in (link.app_record_id, link.salesforce_id) if i}
    args.append([link.link_id for link in links])
    args.append(sorted(ids))
    return f"(link_id = ANY(${len(args) - 1}::text[]) OR record_id = ANY(${len(args)}::text[]))"


def _where(tenant_id: str, query: LogQuery, links: Sequence[RecordLink]) -> tuple[str, list[Any]]:
    args: list[Any] = [tenant_id]
    clauses = ["tenant_id = $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.statuses:
        events = sorted(frozenset().union(*(STATUS_EVENTS.get(s, frozenset()) for s in query.statuses)))
        either = [f"event = ANY({arg(events)}::text[])"] if events else []
        if INFO in query.statuses:
            either.append(f"NOT event = ANY({arg(_KNOWN_EVENTS)}::text[])")
        clauses.append(f"({' OR '.join(either)})")
    if query.events:
        clauses.append(f"event = ANY({arg(sorted(query.events))}::text[])")
    if query.codes:
        clauses.append(f"code = ANY({arg(sorted(query.codes))}::text[])")
    if query.pair is not None:
        pair = arg(query.pair)
        # Rows of a link in the pair, and rows about the pair itself (its quarantine).
        clauses.append(
            f"(link_id IN (SELECT link_id FROM links WHERE tenant_id = $1 AND object_pair = {pair})"
            f" OR detail->>'pair' = {pair})"
        )
    if query.record is not None:
        clauses.append(_record_clause(args, query.record, links))
    if query.since is not None:
        clauses.append(f"at >= {arg(query.since)}")
    if query.until is not None:
        clauses.append(f"at < {arg(query.until)}")
    return " AND ".join(clauses), args


async def search(
    db: Connection, tenant_id: str, query: LogQuery, *, limit: int, after: Position | None = None
) -> tuple[list[LogRow], Position | None]:
    """Up to ``limit`` rows matching ``query``, newest first, from after ``after``; and the position
    to continue from, None when there are no more."""
    links = await links_of(db, tenant_id, query.record) if query.record is not None else []
    where, args = _where(tenant_id, query, links)
    if after is not None:
        args += [after.at, after.id]
        where += f" AND (at, id) < (${len(args) - 1}, ${len(args)})"
    args.append(limit + 1)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM sync_log WHERE {where} ORDER BY at DESC, id DESC LIMIT ${len(args)}", *args
    )
    found = [_row(r) for r in rows]
    more = len(found) > limit
    return found[:limit], found[limit - 1].position if more else None


async def timeline(
    db: Connection, tenant_id: str, record: str, links: Sequence[RecordLink], *, limit: int
) -> tuple[list[LogRow], bool]:
    """The record's last ``limit`` rows, oldest first; and whether older ones were left out."""
    args: list[Any] = [tenant_id]
    clause = _record_clause(args, record, links)
    args.append(limit + 1)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM sync_log WHERE tenant_id = $1 AND {clause} ORDER BY at DESC, id DESC"
        f" LIMIT ${len(args)}",
        *args,
    )
    found = [_row(r) for r in rows]
    return found[:limit][::-1], len(found) > limit

"""Per-org event bus log: replay ids, channels, retention, purge, and the CDC fault helpers.

Every event of an org (change events of all CDC-selected objects, platform events) is appended in
commit order under one per-org counter; its replay id is that counter as 8 big-endian bytes.
An event belongs to one or more channels (``/data/ChangeEvents`` and ``/data/AccountChangeEvent``;
``/event/Order__e``); subscribers read one channel after a replay id.

Memory holds the retained events, so reads never touch the disk. With a ``path`` every append,
purge and schema is also written to SQLite, and a restarted emulator reloads them: replay ids stay
valid across restarts, as subscribers of a real org expect.

Resuming is allowed after any replay id ``r`` with ``floor <= r <= head``: every event after ``r``
is still here. Ids below the floor were purged (retention, or ``purge_before``); ids above the head
were never issued. Both are what Salesforce reports as a corrupted replay id.

Thread safety: the record store may publish from worker threads while subscribers run on the
asyncio loop, so state changes take a lock and wake-ups cross threads with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Final

from services.salesforce_emulator import cdc
from services.salesforce_emulator.changes import ChangeType, CommittedTransaction, RecordChange
from services.salesforce_emulator.schema import ObjectDef

DEFAULT_RETENTION_SECONDS: Final = 72 * 3600
_GAP_TYPES: Final = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"})

SchemaFor = Callable[[str], Mapping[str, ObjectDef]]


def replay_bytes(replay: int) -> bytes:
    """The wire form of a replay id: 8 bytes, big-endian, as Salesforce's clients read it."""
    return replay.to_bytes(8, "big")


def replay_int(raw: bytes) -> int | None:
    """Inverse of :func:`replay_bytes`; None for anything that is not 8 bytes."""
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


_SMALL_VARINTS: Final = tuple(bytes((n,)) for n in range(128))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def consumer_event_entry(event_id: str, schema_id: str, payload: bytes, replay: int) -> bytes:
    """One ``FetchResponse.events`` entry in protobuf wire form (field 1 of FetchResponse).

    Encoded once at append time so that delivering a batch is a byte join, with no per-event
    message building on the hot path. Tags: 0x0A = field 1 bytes, 0x12 = field 2, 0x1A = field 3.
    """
    producer = _length_delimited(0x0A, event_id.encode()) if event_id else b""
    producer += _length_delimited(0x12, schema_id.encode()) if schema_id else b""
    producer += _length_delimited(0x1A, payload) if payload else b""
    consumer = _length_delimited(0x0A, producer) + _length_delimited(0x12, replay_bytes(replay))
    return _length_delimited(0x0A, consumer)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One retained event."""

    replay: int
    channels: tuple[str, ...]
    event_id: str
    schema_id: str
    payload: bytes
    logged_ms: int
    wire: bytes


class Watcher:
    """A subscriber's wake-up call: set when its org gets events or its streams are dropped."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.dropped = False

    def notify(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the subscriber's loop is gone
                self._loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        """Forget earlier wake-ups; call before checking the log, then :meth:`wait`."""
        self._event.clear()

    async def wait(self, seconds: float) -> bool:
        """Whether something happened within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


@dataclass
class _OrgLog:
    head: int = 0
    floor: int = 0
    last_logged_ms: int = 0
    events: list[LoggedEvent] = field(default_factory=list)
    by_channel: dict[str, list[LoggedEvent]] = field(default_factory=dict)
    watchers: set[Watcher] = field(default_factory=set)


_SQL_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS orgs (org TEXT PRIMARY KEY, head INTEGER NOT NULL, floor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schemas (schema_id TEXT PRIMARY KEY, schema_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  org TEXT NOT NULL, replay INTEGER NOT NULL, channels TEXT NOT NULL, event_id TEXT NOT NULL,
  schema_id TEXT NOT NULL, payload BLOB NOT NULL, logged_ms INTEGER NOT NULL,
  PRIMARY KEY (org, replay)
) WITHOUT ROWID;
"""
_REPLAY_KEY: Final = attrgetter("replay")
_LOGGED_KEY: Final = attrgetter("logged_ms")


class EventLog:
    """The event bus of every org; also the :class:`ChangeSink` the record store publishes to."""

    def __init__(
        self,
        schema_for: SchemaFor,
        *,
        path: str | Path | None = None,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._schema_for = schema_for
        self._retention_ms = int(retention_seconds * 1000)
        self._clock = clock
        self._lock = threading.RLock()
        self._orgs: dict[str, _OrgLog] = {}
        self._schemas: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SQL_SCHEMA)
            self._load(self._db)

    def _load(self, db: sqlite3.Connection) -> None:
        for org_id, head, floor in db.execute("SELECT org, head, floor FROM orgs"):
            self._orgs[org_id] = _OrgLog(head=head, floor=floor)
        self._schemas.update(db.execute("SELECT schema_id, schema_json FROM schemas").fetchall())
        rows = db.execute(
            "SELECT org, replay, channels, event_id, schema_id, payload, logged_ms FROM events ORDER BY org, replay"
        )
        for org_id, replay, channels, event_id, schema_id, payload, logged_ms in rows:
            org = self._orgs.setdefault(org_id, _OrgLog())
            event = LoggedEvent(
                replay,
                tuple(channels.split("\n")),
                event_id,
                schema_id,
                payload,
                logged_ms,
                consumer_event_entry(event_id, schema_id, payload, replay),
            )
            self._index(org, event)
            org.head = max(org.head, replay)
            org.last_logged_ms = max(org.last_logged_ms, logged_ms)

    def close(self) -> None:
        """Close the data file, if any."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def schema_for(self) -> SchemaFor:
        """The per-org object definitions the log encodes change events with."""
        return self._schema_for

    # --- writing -------------------------------------------------------------------------------

    def publish(self, transaction: CommittedTransaction) -> None:
        """ChangeSink: encode the transaction's change events and append them; wakes subscribers."""
        events = cdc.change_events(transaction, self._schema_for(transaction.org_id))
        if not events:
            return
        with self._lock:
            for event in events:
                self.register_schema(event.schema.schema_id, event.schema.schema_json)
            self._append(transaction.org_id, [(e.channels, e.event_id, e.schema.schema_id, e.payload) for e in events])

    def append(self, org_id: str, channel: str, events: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Append already encoded ``(event_id, schema_id, payload)`` events to one channel.

        Used for published platform events; returns their replay ids.
        """
        return self._append(
            org_id, [((channel,), event_id, schema_id, payload) for event_id, schema_id, payload in events]
        )

    def _append(self, org_id: str, items: Sequence[tuple[tuple[str, ...], str, str, bytes]]) -> list[int]:
        with self._lock:
            org = self._org(org_id)
            now_ms = max(int(self._clock() * 1000), org.last_logged_ms)
            org.last_logged_ms = now_ms
            appended: list[LoggedEvent] = []
            for channels, event_id, schema_id, payload in items:
                org.head += 1
                event = LoggedEvent(
                    org.head,
                    channels,
                    event_id,
                    schema_id,
                    payload,
                    now_ms,
                    consumer_event_entry(event_id, schema_id, payload, org.head),
                )
                self._index(org, event)
                appended.append(event)
            if self._db is not None:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (org_id, e.replay, "\n".join(e.channels), e.event_id, e.schema_id, e.payload, e.logged_ms)
                        for e in appended
                    ],
                )
                self._save_org(org_id, org)
                self._db.execute("COMMIT")
            self._expire_locked(org_id, org, now_ms)
            watchers = list(org.watchers)
        for watcher in watchers:
            watcher.notify()
        return [e.replay for e in appended]

    @staticmethod
    def _index(org: _OrgLog, event: LoggedEvent) -> None:
        org.events.append(event)
        for channel in event.channels:
            org.by_channel.setdefault(channel, []).append(event)

    def _org(self, org_id: str) -> _OrgLog:
        org = self._orgs.get(org_id)
        if org is None:
            org = self._orgs[org_id] = _OrgLog()
        return org

    def _save_org(self, org_id: str, org: _OrgLog) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO orgs VALUES (?, ?, ?)", (org_id, org.head, org.floor))

    def register_schema(self, schema_id: str, schema_json: str) -> None:
        """Make a schema available to GetSchema (kept across restarts with a data file)."""
        with self._lock:
            if schema_id in self._schemas:
                return
            self._schemas[schema_id] = schema_json
            if self._db is not None:
                self._db.execute("INSERT OR IGNORE INTO schemas VALUES (?, ?)", (schema_id, schema_json))

    def schema_json(self, schema_id: str) -> str | None:
        """A registered schema's JSON, or None."""
        return self._schemas.get(schema_id)

    # --- reading -------------------------------------------------------------------------------

    def head(self, org_id: str) -> int:
        """The last replay id issued in the org (0 before the first event)."""
        org = self._orgs.get(org_id)
        return org.head if org else 0

    def floor(self, org_id: str) -> int:
        """The last replay id no longer retained (0 while nothing was purged)."""
        org = self._orgs.get(org_id)
        return org.floor if org else 0

    def can_resume_after(self, org_id: str, replay: int) -> bool:
        """Whether every event after ``replay`` is still retained (applies retention first)."""
        with self._lock:
            org = self._org(org_id)
            self._expire_locked(org_id, org, int(self._clock() * 1000))
            return org.floor <= replay <= org.head

    def read_after(self, org_id: str, channel: str, after: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` events of ``channel`` with replay ids greater than ``after``, in order."""
        org = self._orgs.get(org_id)
        if org is None or limit <= 0:
            return []
        with self._lock:
            events = org.by_channel.get(channel)
            if not events:
                return []
            start = bisect.bisect_right(events, after, key=_REPLAY_KEY)
            return events[start : start + limit]

    def resume_point(self, org_id: str, channel: str, after: int) -> int:
        """What a subscriber at ``after`` can safely store: past the head once the channel is drained.

        Events of other channels in between do not matter to this subscriber, so a caught-up
        subscription reports the org's head and a resubscribe does not start further back.
        """
        with self._lock:
            org = self._orgs.get(org_id)
            if org is None:
                return after
            events = org.by_channel.get(channel, [])
            if events and events[-1].replay > after:
                return after
            return max(after, org.head)

    def events(self, org_id: str) -> list[LoggedEvent]:
        """Every retained event of the org, in replay order (a copy)."""
        with self._lock:
            org = self._orgs.get(org_id)
            return list(org.events) if org else []

    # --- retention and faults ------------------------------------------------------------------

    def _expire_locked(self, org_id: str, org: _OrgLog, now_ms: int) -> None:
        if org.events and org.events[0].logged_ms < now_ms - self._retention_ms:
            self._purge_locked(org_id, org, now_ms - self._retention_ms)

    def _purge_locked(self, org_id: str, org: _OrgLog, before_ms: int) -> int:
        cut = bisect.bisect_left(org.events, before_ms, key=_LOGGED_KEY)
        if cut == 0:
            return 0
        org.floor = max(org.floor, org.events[cut - 1].replay)
        del org.events[:cut]
        for channel, events in list(org.by_channel.items()):
            del events[: bisect.bisect_right(events, org.floor, key=_REPLAY_KEY)]
            if not events:
                del org.by_channel[channel]
        if self._db is not None:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM events WHERE org = ? AND replay <= ?", (org_id, org.floor))
            self._save_org(org_id, org)
            self._db.execute("COMMIT")
        return cut

    def purge_before(self, org_id: str, timestamp_ms: int) -> int:
        """Drop the org's events logged before ``timestamp_ms`` (epoch ms); returns how many.

        Fault injection for replay expiry: resuming after a purged id then fails as corrupted.
        """
        with self._lock:
            return self._purge_locked(org_id, self._org(org_id), timestamp_ms)

    def inject_gap(
        self,
        org_id: str,
        entity: str,
        record_ids: Sequence[str],
        change_type: ChangeType,
        *,
        commit_user: str = "",
    ) -> None:
        """Publish a header-only gap event (``GAP_CREATE`` … ``GAP_UNDELETE``) for these records."""
        if change_type not in _GAP_TYPES:
            msg = f"not a gap change type: {change_type!r}"
            raise ValueError(msg)
        self._publish_header_only(org_id, RecordChange(entity, change_type, tuple(record_ids), {}), commit_user)

    def inject_overflow(self, org_id: str, entity: str, *, commit_user: str = "") -> None:
        """Publish a ``GAP_OVERFLOW`` event for ``entity`` (no record ids)."""
        self._publish_header_only(org_id, RecordChange(entity, "GAP_OVERFLOW", (), {}), commit_user)

    def _publish_header_only(self, org_id: str, change: RecordChange, commit_user: str) -> None:
        now_ms = int(self._clock() * 1000)
        self.publish(
            CommittedTransaction(
                org_id=org_id,
                transaction_key=str(uuid.uuid4()),
                commit_timestamp_ms=now_ms,
                commit_number=now_ms,
                commit_user=commit_user,
                change_origin="",
                changes=(change,),
            )
        )

    def drop_streams(self, org_id: str) -> int:
        """Cut every open subscription of the org (they end with UNAVAILABLE); returns how many."""
        with self._lock:
            watchers = list(self._org(org_id).watchers)
        for watcher in watchers:
            watcher.dropped = True
            watcher.notify()
        return len(watchers)

    @contextlib.contextmanager
    def watch(self, org_id: str) -> Iterator[Watcher]:
        """Register a subscriber for wake-ups while the block runs (on the subscriber's loop)."""
        watcher = Watcher()
        with self._lock:
            self._org(org_id).watchers.add(watcher)
        try:
            yield watcher
        finally:
            with self._lock:
                self._org(org_id).watchers.discard(watcher)

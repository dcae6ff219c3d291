"""The record store of the emulated orgs: SQLite, one connection, one write transaction at a time.

Records live in one table as JSON (flat API field names, REST JSON values) plus the columns the
APIs filter on (object, IsDeleted, SystemModstamp, deleted date). Formula fields and derived
compound values are computed on read, so they can never go stale. External-id and unique fields
are mirrored in ``field_index`` for upsert matching and duplicate checks.

Every write goes through a :class:`Transaction` (``with store.transaction(ctx) as txn``). It is
atomic: leaving the block with an exception rolls back everything and publishes nothing. After
COMMIT the store publishes one :class:`CommittedTransaction` with every change, in order, to the
:class:`ChangeSink`, still under the store lock so that sinks see commits in commit order.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.salesforce_emulator import ids
from services.salesforce_emulator.changes import ChangeSink, CommittedTransaction, JsonValue, RecordChange
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.schema import FieldDef, ObjectDef
from services.salesforce_emulator.validation import (
    ObjectPlan,
    Source,
    check_required,
    check_values,
    check_writable,
    coerce,
    deserialize,
    format_date,
    format_datetime,
    plan_for,
)

log = logging.getLogger(__name__)

SchemaFor = Callable[[str], Mapping[str, ObjectDef]]
FaultsFor = Callable[[str], OrgFaults]
ReadonlyFieldsFor = Callable[[str, str], Collection[str]]
# (org id, custom metadata type) -> its records: metadata kept with the org, not rows of this store.
MetadataRecordsFor = Callable[[str, str], Sequence[Mapping[str, JsonValue]]]

_DDL = """
CREATE TABLE IF NOT EXISTS records (
    org_id TEXT NOT NULL,
    id TEXT NOT NULL,
    object TEXT NOT NULL,
    data TEXT NOT NULL,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    modstamp_ms INTEGER NOT NULL,
    deleted_ms INTEGER,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX IF NOT EXISTS records_by_modstamp ON records (org_id, object, modstamp_ms);
CREATE INDEX IF NOT EXISTS records_by_deleted ON records (org_id, object, deleted_ms) WHERE deleted_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS field_index (
    org_id TEXT NOT NULL,
    object TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (org_id, object, field, value, record_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (org_id, name)
) WITHOUT ROWID;
"""

# The only objects Salesforce's merge() accepts.
MERGEABLE_OBJECTS = frozenset({"Account", "Contact", "Lead", "Case"})

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


def _index_key(value: JsonValue) -> str:
    # External ids match case-insensitively, as they do in Salesforce unless marked case-sensitive.
    return value.lower() if isinstance(value, str) else _dumps(value)


@dataclass
class MultipleMatchesError(SalesforceError):
    """An external id matched several records (REST answers 300 with their URLs)."""

    record_ids: list[str] = field(default_factory=list)


def not_found() -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


def entity_cannot_be(verb: str, obj: ObjectDef) -> SalesforceError:
    """A write to an object no one may write through the data API (a custom metadata type).

    The shape a real org answered to a REST PATCH of a ``__mdt`` record: 400,
    ``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY``, ``entity type cannot be updated: <type label>``.
    """
    return SalesforceError(400, "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", f"entity type cannot be {verb}: {obj.label}")


def entity_is_deleted() -> SalesforceError:
    return SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted")


def lock_error(record_id: str) -> SalesforceError:
    return SalesforceError(
        400, "UNABLE_TO_LOCK_ROW", f"unable to obtain exclusive access to this record or 1 records: {record_id}"
    )


def invalid_cross_reference(f: FieldDef, value: str) -> SalesforceError:
    label = f.label or f.name
    return SalesforceError(
        400, "INVALID_CROSS_REFERENCE_KEY", f"{label}: id value of incorrect type: {value}", [f.name]
    )


@dataclass(frozen=True)
class StoredRecord:
    """A record as stored (data holds stored fields only)."""

    object_name: str
    record_id: str
    data: dict[str, JsonValue]
    is_deleted: bool


def compound_address(plan: ObjectPlan, row: Mapping[str, Any], compound: str) -> dict[str, Any] | None:
    """The REST value of an address compound (``BillingAddress``), or None when every part is null."""
    for name, parts in plan.addresses:
        if name == compound:
            value: dict[str, Any] = {component[0].lower() + component[1:]: row.get(flat) for component, flat in parts}
            if all(v is None for v in value.values()):
                return None
            value.setdefault("geocodeAccuracy", None)
            return dict(sorted(value.items()))
    return None


def _typed_formula(f: FieldDef, value: Any) -> JsonValue:
    if f.type == "boolean":
        return bool(value)
    if value is None:
        return None
    if f.type in ("int", "double", "currency", "percent"):
        try:
            num = float(value)
        except (TypeError, ValueError):
            return None
        return int(num) if f.type == "int" else num
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str | int | float) else str(value)


def expand(plan: ObjectPlan, data: Mapping[str, JsonValue], is_deleted: bool) -> dict[str, JsonValue]:
    """Every field of a stored record (compounds excluded), with formulas and derived Name computed."""
    row: dict[str, JsonValue] = {}
    for f in plan.obj.fields:
        if f.type != "address":
            row[f.name] = data.get(f.name)
    row["IsDeleted"] = is_deleted
    if plan.derived_name:
        parts = [data.get("FirstName"), data.get("LastName")]
        row["Name"] = " ".join(str(p) for p in parts if p) or None
    for f, formula in plan.formulas:
        try:
            row[f.name] = _typed_formula(f, formula.evaluate(row))
        except (TypeError, ValueError, ArithmeticError):
            row[f.name] = None
    return row


class RecordStore:
    """All orgs' records. Thread-safe; one write transaction at a time."""

    def __init__(
        self,
        path: str,
        *,
        schema_for: SchemaFor,
        faults_for: FaultsFor,
        sink: ChangeSink,
        readonly_fields_for: ReadonlyFieldsFor | None = None,
        metadata_records_for: MetadataRecordsFor | None = None,
        id_instance: str = "5g",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_DDL)
        self._lock = threading.RLock()
        self._schema_for = schema_for
        self._faults_for = faults_for
        self._sink = sink
        self._readonly_fields_for = readonly_fields_for or (lambda _org, _user: ())
        self._metadata_records_for = metadata_records_for or (lambda _org, _object: ())
        self._id_instance = id_instance
        self._id_factories: dict[str, ids.IdFactory] = {}
        self._clock = clock
        self._last_ms = 0
        self.started_ms = self.now_ms()
        self._in_txn = False

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def reset_org(self, org_id: str) -> None:
        """Forget every record of one org, without change events (like a fresh sandbox)."""
        with self._lock, self._conn:
            for table in ("records", "field_index", "counters"):
                self._conn.execute(f"DELETE FROM {table} WHERE org_id = ?", (org_id,))

    # --- time and ids ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Epoch ms, never going backwards within this store."""
        ms = int(self._clock() * 1000)
        self._last_ms = max(self._last_ms, ms)
        return self._last_ms

    def _next_id(self, org_id: str, key_prefix: str) -> str:
        factory = self._id_factories.get(org_id)
        if factory is None:
            # Continue after the highest counter ever issued in this org (the counter is base-62 with
            # digits ordered as in ASCII, so the lexicographic maximum is the numeric maximum).
            row = self._conn.execute(
                "SELECT MAX(substr(id, 6, 10)) FROM records WHERE org_id = ?", (org_id,)
            ).fetchone()
            floor = self._counter_value(org_id, "id_floor")
            start = max(_decode62(row[0]) if row[0] else 0, floor) + 1
            factory = ids.IdFactory(self._id_instance, start=start)
            self._id_factories[org_id] = factory
        new_id = factory.next(key_prefix)
        return new_id

    def _counter_value(self, org_id: str, name: str) -> int:
        row = self._conn.execute("SELECT value FROM counters WHERE org_id = ? AND name = ?", (org_id, name)).fetchone()
        return int(row[0]) if row else 0

    def _bump_counter(self, org_id: str, name: str, start: int = 0) -> int:
        row = self._conn.execute(
            "INSERT INTO counters (org_id, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT (org_id, name) DO UPDATE SET value = value + 1 RETURNING value",
            (org_id, name, start + 1),
        ).fetchone()
        return int(row[0])

    # --- schema ---------------------------------------------------------------------------------

    def objects(self, org_id: str) -> Mapping[str, ObjectDef]:
        return self._schema_for(org_id)

    def object_def(self, org_id: str, name: str) -> ObjectDef | None:
        """An object of the org by API name, case-insensitively."""
        objects = self._schema_for(org_id)
        obj = objects.get(name)
        if obj is not None:
            return obj
        lower = name.lower()
        return next((o for o in objects.values() if o.name.lower() == lower), None)

    def plan(self, org_id: str, name: str) -> ObjectPlan:
        obj = self.object_def(org_id, name)
        if obj is None:
            raise not_found()
        return plan_for(obj)

    def object_for_id(self, org_id: str, record_id: str) -> ObjectDef | None:
        prefix = record_id[:3]
        return next((o for o in self._schema_for(org_id).values() if o.key_prefix == prefix), None)

    # --- read API -------------------------------------------------------------------------------

    def rows(self, org_id: str, object_name: str, *, include_deleted: bool = False) -> Iterator[dict[str, JsonValue]]:
        """Every record of an object (in creation order) with every field; compounds left out.

        Address compounds (``BillingAddress``) are not scalar; build them with :func:`compound_address`.
        """
        plan = self.plan(org_id, object_name)
        if plan.obj.custom_metadata:
            # Every row carries IsDeleted, as expand() gives it; metadata records are never in a recycle bin.
            yield from ({**row, "IsDeleted": False} for row in self._metadata_records_for(org_id, plan.obj.name))
            return
        sql = "SELECT data, is_deleted FROM records WHERE org_id = ? AND object = ?"
        if not include_deleted:
            sql += " AND is_deleted = 0"
        with self._lock:
            fetched = self._conn.execute(sql + " ORDER BY rowid", (org_id, plan.obj.name)).fetchall()
        for data, deleted in fetched:
            yield expand(plan, _loads(data), bool(deleted))

    def get(self, org_id: str, object_name: str, record_id: str) -> dict[str, JsonValue] | None:
        """One record with every field (deleted ones too: see ``IsDeleted``), or None."""
        plan = self.plan(org_id, object_name)
        if not ids.is_valid(record_id):
            return None
        if plan.obj.custom_metadata:
            rows = self._metadata_records_for(org_id, plan.obj.name)
            return next(({**row, "IsDeleted": False} for row in rows if ids.same(str(row["Id"]), record_id)), None)
        stored = self._load(org_id, ids.to18(record_id))
        if stored is None or stored.object_name != plan.obj.name:
            return None
        return expand(plan, stored.data, stored.is_deleted)

    def find_ids(self, org_id: str, object_name: str, field_name: str, value: JsonValue) -> list[str]:
        """Ids of live records whose external-id/unique ``field_name`` equals ``value``."""
        plan = self.plan(org_id, object_name)
        with self._lock:
            return self._match(org_id, plan, field_name, value)

    def updated_ids(self, org_id: str, object_name: str, start_ms: int, end_ms: int) -> list[str]:
        """Live records whose SystemModstamp is in [start, end)."""
        plan = self.plan(org_id, object_name)
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM records WHERE org_id = ? AND object = ? AND modstamp_ms >= ? AND modstamp_ms < ? "
                "AND is_deleted = 0 ORDER BY modstamp_ms, id",
                (org_id, plan.obj.name, start_ms, end_ms),
            ).fetchall()
        return [r[0] for r in rows]

    def deleted_records(self, org_id: str, object_name: str, start_ms: int, end_ms: int) -> list[tuple[str, int]]:
        """(id, deleted ms) of records in the recycle bin deleted in [start, end)."""
        plan = self.plan(org_id, object_name)
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, deleted_ms FROM records WHERE org_id = ? AND object = ? AND is_deleted = 1 "
                "AND deleted_ms >= ? AND deleted_ms < ? ORDER BY deleted_ms, id",
                (org_id, plan.obj.name, start_ms, end_ms),
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def recent_ids(self, org_id: str, object_name: str, limit: int = 10) -> list[str]:
        plan = self.plan(org_id, object_name)
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM records WHERE org_id = ? AND object = ? AND is_deleted = 0 "
                "ORDER BY modstamp_ms DESC, rowid DESC LIMIT ?",
                (org_id, plan.obj.name, limit),
            ).fetchall()
        return [r[0] for r in rows]

    # --- internal reads (lock held) -------------------------------------------------------------

    def _load(self, org_id: str, record_id: str) -> StoredRecord | None:
        row = self._conn.execute(
            "SELECT object, data, is_deleted FROM records WHERE org_id = ? AND id = ?", (org_id, record_id)
        ).fetchone()
        if row is None:
            return None
        return StoredRecord(row[0], record_id, _loads(row[1]), bool(row[2]))

    def _match(self, org_id: str, plan: ObjectPlan, field_name: str, value: JsonValue) -> list[str]:
        rows = self._conn.execute(
            "SELECT fi.record_id FROM field_index fi JOIN records r ON r.org_id = fi.org_id AND r.id = fi.record_id "
            "WHERE fi.org_id = ? AND fi.object = ? AND fi.field = ? AND fi.value = ? AND r.is_deleted = 0 "
            "ORDER BY r.rowid",
            (org_id, plan.obj.name, field_name, _index_key(value)),
        ).fetchall()
        return [r[0] for r in rows]

    # --- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self, ctx: CallContext) -> Iterator[Transaction]:
        """An atomic unit of writes; see the module docstring."""
        with self._lock:
            if self._in_txn:
                msg = "transactions do not nest; use Transaction.savepoint()"
                raise RuntimeError(msg)
            self._in_txn = True
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                txn = Transaction(self, ctx, self.now_ms())
                try:
                    yield txn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                committed = self._commit(txn)
            finally:
                self._in_txn = False
            if committed is not None:
                try:
                    self._sink.publish(committed)
                except Exception:
                    # The write is durable; a broken sink must not turn it into an API failure.
                    log.exception("change sink failed for transaction %s", committed.transaction_key)

    def _commit(self, txn: Transaction) -> CommittedTransaction | None:
        changes = tuple(txn.changes)
        if not changes:
            self._conn.execute("COMMIT")
            return None
        commit_number = self._bump_counter(txn.ctx.org_id, "commit")
        self._conn.execute("COMMIT")
        return CommittedTransaction(
            org_id=txn.ctx.org_id,
            transaction_key=str(uuid.uuid4()),
            commit_timestamp_ms=self.now_ms(),
            commit_number=commit_number,
            commit_user=txn.ctx.user_id,
            change_origin=txn.ctx.change_origin,
            changes=changes,
        )

    # --- composite operations -------------------------------------------------------------------

    def merge(
        self,
        ctx: CallContext,
        object_name: str,
        master_id: str,
        loser_ids: Collection[str],
        master_values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Merge up to two losers into ``master``: children re-pointed, master updated, losers deleted.

        Losers go to the recycle bin with ``MasterRecordId`` set. One transaction; returns a MergeResult.
        """
        with self.transaction(ctx) as txn:
            return txn.merge(object_name, master_id, loser_ids, master_values)

    def convert_lead(
        self,
        ctx: CallContext,
        lead_id: str,
        *,
        converted_status: str = "Closed - Converted",
        account_id: str | None = None,
        contact_id: str | None = None,
        do_not_create_opportunity: bool = False,
        opportunity_name: str | None = None,
    ) -> dict[str, Any]:
        """Convert a lead as ``Database.convertLead`` does; one transaction; returns a LeadConvertResult."""
        with self.transaction(ctx) as txn:
            return txn.convert_lead(
                lead_id,
                converted_status=converted_status,
                account_id=account_id,
                contact_id=contact_id,
                do_not_create_opportunity=do_not_create_opportunity,
                opportunity_name=opportunity_name,
            )


def _decode62(text: str) -> int:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = 0
    for ch in text:
        pos = alphabet.find(ch)
        if pos < 0:
            return 0
        n = n * 62 + pos
    return n


class Transaction:
    """Record operations inside one store transaction. Each failing operation raises
    :class:`SalesforceError` before writing anything, so callers may catch it and go on
    (partial success) or let it escape (everything rolls back)."""

    def __init__(self, store: RecordStore, ctx: CallContext, now_ms: int) -> None:
        self._store = store
        self._conn = store._conn
        self.ctx = ctx
        self.org_id = ctx.org_id
        self.now_ms = now_ms
        self.now_text = format_datetime(now_ms)
        self.changes: list[RecordChange] = []
        self._readonly: Collection[str] | None = None
        self._faults: OrgFaults | None = None
        self._sp = 0

    # --- helpers --------------------------------------------------------------------------------

    @property
    def readonly(self) -> Collection[str]:
        if self._readonly is None:
            self._readonly = self._store._readonly_fields_for(self.org_id, self.ctx.user_id)
        return self._readonly

    def _lock_fault(self, record_key: str) -> bool:
        if self._faults is None:
            self._faults = self._store._faults_for(self.org_id)
        return self._faults.lock_error(record_key)

    def plan(self, object_name: str) -> ObjectPlan:
        return self._store.plan(self.org_id, object_name)

    @staticmethod
    def _writable_entity(plan: ObjectPlan, verb: str) -> None:
        # Custom metadata records are metadata: every data API write is refused before anything
        # else is looked at, trusted internal writes included.
        if plan.obj.custom_metadata:
            raise entity_cannot_be(verb, plan.obj)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested all-or-none scope: an exception undoes its writes and changes, then propagates."""
        self._sp += 1
        name = f"sp{self._sp}"
        mark = len(self.changes)
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            del self.changes[mark:]
            raise
        self._conn.execute(f"RELEASE {name}")

    def _record(self, record_id: str, plan: ObjectPlan | None = None) -> StoredRecord:
        if not ids.is_valid(record_id):
            label = plan.obj.name if plan else "Record"
            raise SalesforceError(400, "MALFORMED_ID", f"{label} ID: id value of incorrect type: {record_id}")
        stored = self._store._load(self.org_id, ids.to18(record_id))
        if stored is None or (plan is not None and stored.object_name != plan.obj.name):
            raise not_found()
        return stored

    def _check_references(self, plan: ObjectPlan, values: Mapping[str, JsonValue]) -> None:
        for name, targets in plan.references:
            value = values.get(name)
            if value is None or not targets:
                continue
            assert isinstance(value, str)
            f = plan.by_lower[name.lower()]
            target_objects = [self._store.object_def(self.org_id, t) for t in targets]
            if not any(o is not None and o.key_prefix == value[:3] for o in target_objects):
                raise invalid_cross_reference(f, value)
            if "User" in targets and ids.same(value, self.ctx.user_id):
                continue
            row = self._conn.execute(
                "SELECT is_deleted FROM records WHERE org_id = ? AND id = ?", (self.org_id, ids.to18(value))
            ).fetchone()
            if row is None:
                raise invalid_cross_reference(f, value)
            if row[0]:
                raise SalesforceError(400, "ENTITY_IS_DELETED", "entity is deleted", [name])

    def _check_unique(self, plan: ObjectPlan, values: Mapping[str, JsonValue], record_id: str | None) -> None:
        for name in plan.unique:
            value = values.get(name)
            if value is None:
                continue
            for other in self._store._match(self.org_id, plan, name, value):
                if other != record_id:
                    raise SalesforceError(
                        400,
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {name} duplicates value on record with id: {other}",
                        [name],
                    )

    def _normalize_refs(self, plan: ObjectPlan, values: dict[str, JsonValue]) -> None:
        # The API always answers with 18-character ids, so 15-character input is widened on write.
        for name, _ in plan.references:
            v = values.get(name)
            if isinstance(v, str) and len(v) == 15:
                values[name] = ids.to18(v)

    def _index(self, plan: ObjectPlan, record_id: str, values: Mapping[str, JsonValue], old: Mapping[str, Any]) -> None:
        for name in plan.indexed:
            if name not in values:
                continue
            before, after = old.get(name), values[name]
            if before == after:
                continue
            if before is not None:
                self._conn.execute(
                    "DELETE FROM field_index WHERE org_id = ? AND object = ? AND field = ? AND value = ? "
                    "AND record_id = ?",
                    (self.org_id, plan.obj.name, name, _index_key(before), record_id),
                )
            if after is not None:
                self._conn.execute(
                    "INSERT OR IGNORE INTO field_index (org_id, object, field, value, record_id) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (self.org_id, plan.obj.name, name, _index_key(after), record_id),
                )

    # --- create ---------------------------------------------------------------------------------

    def create(self, object_name: str, body: Mapping[str, Any], source: Source = "json") -> str:
        """Create from a request body; returns the new 18-character id."""
        plan = self.plan(object_name)
        self._writable_entity(plan, "inserted")
        values, body_id = deserialize(plan, body, source)
        if body_id is not None:
            raise SalesforceError(
                400, "INVALID_FIELD_FOR_INSERT_UPDATE", "Record ID: cannot specify Id in an insert call", ["Id"]
            )
        return self.create_values(plan, values)

    def create_values(self, plan: ObjectPlan, values: dict[str, JsonValue], *, trusted: bool = False) -> str:
        """Create from deserialized values. ``trusted`` skips writability checks (internal writes)."""
        self._writable_entity(plan, "inserted")
        if not trusted:
            check_writable(plan, values, "create", self.readonly)
        check_values(plan, values)
        record: dict[str, JsonValue] = {**dict(plan.defaults), **values}
        check_required(plan, record, "create")
        self._normalize_refs(plan, record)
        self._check_references(plan, record)
        self._check_unique(plan, record, None)
        if self._lock_fault(f"{plan.obj.name}:create"):
            raise lock_error(plan.obj.name)
        store = self._store
        record_id = store._next_id(self.org_id, plan.obj.key_prefix)
        for name in plan.auto_numbers:
            n = store._bump_counter(self.org_id, f"auto:{plan.obj.name}.{name}", start=1000)
            record[name] = f"{n:08d}"
        user = self.ctx.user_id
        record["Id"] = record_id
        record["CreatedDate"] = self.now_text
        record["LastModifiedDate"] = self.now_text
        record["SystemModstamp"] = self.now_text
        record["CreatedById"] = user
        record["LastModifiedById"] = user
        if "OwnerId" in plan.stored and record.get("OwnerId") is None:
            record["OwnerId"] = user
        data = {k: v for k, v in record.items() if v is not None}
        self._conn.execute(
            "INSERT INTO records (org_id, id, object, data, is_deleted, modstamp_ms) VALUES (?, ?, ?, ?, 0, ?)",
            (self.org_id, record_id, plan.obj.name, _dumps(data), self.now_ms),
        )
        self._index(plan, record_id, data, {})
        change_values = {k: v for k, v in data.items() if k != "SystemModstamp"}
        self.changes.append(RecordChange(plan.obj.name, "CREATE", (record_id,), change_values))
        return record_id

    # --- update ---------------------------------------------------------------------------------

    def update(self, object_name: str | None, record_id: str, body: Mapping[str, Any], source: Source = "json") -> None:
        """Update from a request body (``object_name`` None: taken from the id's key prefix)."""
        plan = self._plan_for_id(object_name, record_id)
        self._writable_entity(plan, "updated")
        values, body_id = deserialize(plan, body, source)
        if body_id is not None and not (ids.is_valid(body_id) and ids.same(body_id, record_id)):
            raise SalesforceError(400, "INVALID_FIELD", "The Id field should not be specified in the sobject data.")
        self.update_values(plan, record_id, values)

    def _plan_for_id(self, object_name: str | None, record_id: str) -> ObjectPlan:
        if object_name is not None:
            return self.plan(object_name)
        obj = self._store.object_for_id(self.org_id, record_id) if ids.is_valid(record_id) else None
        if obj is None:
            raise SalesforceError(400, "MALFORMED_ID", f"malformed id {record_id}")
        return plan_for(obj)

    def update_values(
        self, plan: ObjectPlan, record_id: str, values: dict[str, JsonValue], *, trusted: bool = False
    ) -> None:
        self._writable_entity(plan, "updated")
        stored = self._record(record_id, plan)
        if stored.is_deleted:
            raise entity_is_deleted()
        if not trusted:
            if stored.data.get("IsConverted") is True and plan.obj.name == "Lead":
                raise SalesforceError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
            check_writable(plan, values, "update", self.readonly)
        check_values(plan, values)
        check_required(plan, values, "update")
        self._normalize_refs(plan, values)
        self._check_references(plan, values)
        self._check_unique(plan, values, stored.record_id)
        if self._lock_fault(stored.record_id):
            raise lock_error(stored.record_id)
        self._apply_update(plan, stored, values)

    def _apply_update(self, plan: ObjectPlan, stored: StoredRecord, values: Mapping[str, JsonValue]) -> None:
        old = stored.data
        data = dict(old)
        changed: list[str] = []
        nulled: list[str] = []
        new_values: dict[str, JsonValue] = {}
        for name, value in values.items():
            if old.get(name) == value:
                continue
            changed.append(name)
            new_values[name] = value
            if value is None:
                nulled.append(name)
                data.pop(name, None)
            else:
                data[name] = value
        data["LastModifiedDate"] = self.now_text
        data["SystemModstamp"] = self.now_text
        changed.append("LastModifiedDate")
        new_values["LastModifiedDate"] = self.now_text
        if old.get("LastModifiedById") != self.ctx.user_id:
            data["LastModifiedById"] = self.ctx.user_id
            changed.append("LastModifiedById")
            new_values["LastModifiedById"] = self.ctx.user_id
        self._conn.execute(
            "UPDATE records SET data = ?, modstamp_ms = ? WHERE org_id = ? AND id = ?",
            (_dumps(data), self.now_ms, self.org_id, stored.record_id),
        )
        self._index(plan, stored.record_id, new_values, old)
        self.changes.append(
            RecordChange(plan.obj.name, "UPDATE", (stored.record_id,), new_values, tuple(changed), tuple(nulled))
        )

    # --- upsert ---------------------------------------------------------------------------------

    def upsert(
        self,
        object_name: str,
        ext_field: str,
        ext_value: Any,
        body: Mapping[str, Any],
        source: Source = "json",
    ) -> tuple[str, bool]:
        """Create or update the record whose ``ext_field`` equals ``ext_value``: (id, created)."""
        plan = self.plan(object_name)
        self._writable_entity(plan, "inserted")
        values, _ = deserialize(plan, body, source)
        return self.upsert_values(plan, ext_field, ext_value, values)

    def external_field(self, plan: ObjectPlan, ext_field: str) -> FieldDef:
        """The field named in an upsert path: ``Id`` or an external-id field, else NOT_FOUND."""
        f = plan.field(ext_field)
        if f is None or not (f.external_id or f.name == "Id"):
            raise SalesforceError(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {ext_field}"
            )
        return f

    def upsert_values(
        self, plan: ObjectPlan, ext_field: str, ext_value: Any, values: dict[str, JsonValue]
    ) -> tuple[str, bool]:
        # No custom metadata record is ever stored here to match, so an upsert could only insert.
        self._writable_entity(plan, "inserted")
        f = self.external_field(plan, ext_field)
        if f.name == "Id":
            if ext_value in (None, ""):
                return self.create_values(plan, values), True
            self.update_values(plan, str(ext_value), values)
            return ids.to18(str(ext_value)), False
        key = coerce(f, ext_value, "csv" if isinstance(ext_value, str) else "json")
        if key is None:
            raise SalesforceError(400, "MISSING_ARGUMENT", f"{f.name} not specified", [f.name])
        matches = self._store._match(self.org_id, plan, f.name, key)
        if len(matches) > 1:
            raise MultipleMatchesError(
                300,
                "MULTIPLE_RECORDS",
                f"{f.name}: more than one record found for external id field: {matches}",
                [f.name],
                record_ids=matches,
            )
        values = {**values, f.name: key}
        if not matches:
            return self.create_values(plan, values), True
        update = {k: v for k, v in values.items() if k != f.name}
        self.update_values(plan, matches[0], update)
        return matches[0], False

    # --- delete / undelete ----------------------------------------------------------------------

    def delete(self, record_id: str, object_name: str | None = None, *, master_id: str | None = None) -> str:
        """Move a record to the recycle bin; returns its 18-character id."""
        plan = self._plan_for_id(object_name, record_id)
        self._writable_entity(plan, "deleted")
        stored = self._record(record_id, plan)
        if stored.is_deleted:
            raise entity_is_deleted()
        if self._lock_fault(stored.record_id):
            raise lock_error(stored.record_id)
        data = dict(stored.data)
        data["SystemModstamp"] = self.now_text
        if master_id is not None:
            data["MasterRecordId"] = master_id
        self._conn.execute(
            "UPDATE records SET data = ?, is_deleted = 1, deleted_ms = ?, modstamp_ms = ? WHERE org_id = ? AND id = ?",
            (_dumps(data), self.now_ms, self.now_ms, self.org_id, stored.record_id),
        )
        self.changes.append(RecordChange(plan.obj.name, "DELETE", (stored.record_id,), {}))
        return stored.record_id

    def undelete(self, record_id: str, object_name: str | None = None) -> str:
        """Restore a record from the recycle bin."""
        plan = self._plan_for_id(object_name, record_id)
        self._writable_entity(plan, "undeleted")
        stored = self._record(record_id, plan)
        if not stored.is_deleted:
            raise SalesforceError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin")
        self._check_unique(plan, stored.data, stored.record_id)
        if self._lock_fault(stored.record_id):
            raise lock_error(stored.record_id)
        data = dict(stored.data)
        data.pop("MasterRecordId", None)
        data["SystemModstamp"] = self.now_text
        self._conn.execute(
            "UPDATE records SET data = ?, is_deleted = 0, deleted_ms = NULL, modstamp_ms = ? "
            "WHERE org_id = ? AND id = ?",
            (_dumps(data), self.now_ms, self.org_id, stored.record_id),
        )
        values = {k: v for k, v in data.items() if k != "SystemModstamp"}
        self.changes.append(RecordChange(plan.obj.name, "UNDELETE", (stored.record_id,), values))
        return stored.record_id

    def hard_delete(self, record_id: str, object_name: str | None = None) -> str:
        """Erase a record. A live record yields a DELETE change; one already in the recycle bin yields none."""
        plan = self._plan_for_id(object_name, record_id)
        self._writable_entity(plan, "deleted")
        stored = self._record(record_id, plan)
        if not stored.is_deleted and self._lock_fault(stored.record_id):
            raise lock_error(stored.record_id)
        self._conn.execute("DELETE FROM records WHERE org_id = ? AND id = ?", (self.org_id, stored.record_id))
        self._conn.execute(
            "DELETE FROM field_index WHERE org_id = ? AND object = ? AND record_id = ?",
            (self.org_id, plan.obj.name, stored.record_id),
        )
        # Remember the counter so a restarted store never reissues an erased id.
        counter = _decode62(stored.record_id[5:15])
        self._conn.execute(
            "INSERT INTO counters (org_id, name, value) VALUES (?, 'id_floor', ?) "
            "ON CONFLICT (org_id, name) DO UPDATE SET value = MAX(value, excluded.value)",
            (self.org_id, counter),
        )
        if not stored.is_deleted:
            self.changes.append(RecordChange(plan.obj.name, "DELETE", (stored.record_id,), {}))
        return stored.record_id

    # --- merge and lead conversion ----------------------------------------------------------------

    def merge(
        self,
        object_name: str,
        master_id: str,
        loser_ids: Collection[str],
        master_values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        plan = self.plan(object_name)
        if plan.obj.name not in MERGEABLE_OBJECTS or plan.field("MasterRecordId") is None:
            raise SalesforceError(400, "INVALID_TYPE", f"{plan.obj.name} records cannot be merged")
        losers = [ids.to18(i) if ids.is_valid(i) else i for i in loser_ids]
        if not 1 <= len(losers) <= 2:
            raise SalesforceError(400, "INVALID_ARGUMENT", "A merge request needs one or two records to merge")
        master = self._record(master_id, plan)
        if master.is_deleted:
            raise entity_is_deleted()
        if master.record_id in losers or len(set(losers)) != len(losers):
            raise SalesforceError(400, "INVALID_ARGUMENT", "Duplicate ids in merge request")
        for loser in losers:
            if self._record(loser, plan).is_deleted:
                raise entity_is_deleted()
        values, _ = deserialize(plan, master_values or {})
        self.update_values(plan, master.record_id, values)
        updated_related = self._reparent(plan.obj.name, losers, master.record_id)
        for loser in losers:
            self.delete(loser, plan.obj.name, master_id=master.record_id)
        return {
            "id": master.record_id,
            "mergedRecordIds": losers,
            "updatedRelatedIds": updated_related,
            "success": True,
            "errors": [],
        }

    def _reparent(self, target: str, old_ids: list[str], new_id: str) -> list[str]:
        moved: list[str] = []
        marks = ",".join("?" * len(old_ids))
        for obj in self._store.objects(self.org_id).values():
            child_plan = plan_for(obj)
            for f in obj.fields:
                if f.type != "reference" or target not in f.reference_to or f.system or f.name == "MasterRecordId":
                    continue
                rows = self._conn.execute(
                    f"SELECT id, data FROM records WHERE org_id = ? AND object = ? AND is_deleted = 0 "
                    f"AND json_extract(data, '$.{f.name}') IN ({marks})",
                    (self.org_id, obj.name, *old_ids),
                ).fetchall()
                for child_id, data in rows:
                    stored = StoredRecord(obj.name, child_id, _loads(data), False)
                    self._apply_update(child_plan, stored, {f.name: new_id})
                    moved.append(child_id)
        return moved

    def convert_lead(
        self,
        lead_id: str,
        *,
        converted_status: str = "Closed - Converted",
        account_id: str | None = None,
        contact_id: str | None = None,
        do_not_create_opportunity: bool = False,
        opportunity_name: str | None = None,
    ) -> dict[str, Any]:
        lead_plan = self.plan("Lead")
        lead = self._record(lead_id, lead_plan)
        if lead.is_deleted:
            raise entity_is_deleted()
        d = lead.data
        if d.get("IsConverted") is True:
            raise SalesforceError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        today = format_date(self.now_ms)
        if account_id is None:
            account = {
                "Name": d.get("Company"),
                "Phone": d.get("Phone"),
                "BillingStreet": d.get("Street"),
                "BillingCity": d.get("City"),
                "BillingState": d.get("State"),
                "BillingPostalCode": d.get("PostalCode"),
                "BillingCountry": d.get("Country"),
            }
            account_id = self.create_values(self.plan("Account"), _present(account), trusted=True)
        else:
            account_id = self._record(account_id, self.plan("Account")).record_id
        if contact_id is None:
            contact = {
                "Salutation": d.get("Salutation"),
                "FirstName": d.get("FirstName"),
                "LastName": d.get("LastName"),
                "Email": d.get("Email"),
                "Phone": d.get("Phone"),
                "Title": d.get("Title"),
                "AccountId": account_id,
                "MailingStreet": d.get("Street"),
                "MailingCity": d.get("City"),
                "MailingState": d.get("State"),
                "MailingPostalCode": d.get("PostalCode"),
                "MailingCountry": d.get("Country"),
            }
            contact_id = self.create_values(self.plan("Contact"), _present(contact), trusted=True)
        else:
            contact_id = self._record(contact_id, self.plan("Contact")).record_id
        opportunity_id: str | None = None
        if not do_not_create_opportunity:
            opp_plan = self.plan("Opportunity")
            stage = opp_plan.field("StageName")
            close = datetime.fromtimestamp(self.now_ms / 1000, tz=UTC) + timedelta(days=30)
            opportunity = {
                "Name": opportunity_name or f"{d.get('Company')}-",
                "AccountId": account_id,
                "StageName": stage.picklist_values[0] if stage and stage.picklist_values else "Prospecting",
                "CloseDate": close.strftime("%Y-%m-%d"),
            }
            opportunity_id = self.create_values(opp_plan, _present(opportunity), trusted=True)
        if self._lock_fault(lead.record_id):
            raise lock_error(lead.record_id)
        self._apply_update(
            lead_plan,
            lead,
            {
                "IsConverted": True,
                "ConvertedDate": today,
                "ConvertedAccountId": account_id,
                "ConvertedContactId": contact_id,
                "ConvertedOpportunityId": opportunity_id,
                "Status": converted_status,
            },
        )
        return {
            "leadId": lead.record_id,
            "accountId": account_id,
            "contactId": contact_id,
            "opportunityId": opportunity_id,
            "success": True,
            "errors": [],
        }


def _present(values: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    return {k: v for k, v in values.items() if v is not None}

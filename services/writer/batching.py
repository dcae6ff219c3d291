"""Gather record writes into as few Salesforce calls as possible. Pure: no I/O, explicit clock.

Writes are grouped per tenant, object, operation and external-id field; a group becomes a batch
when it holds 200 records (the sObject Collections limit) or its oldest write has waited the
batching window. Several writes to the same record inside the window are coalesced into one, so
ten edits cost one write. Groups larger than the Bulk threshold go through Bulk API 2.0 when
ingestion is ``automatic`` (or always with ``bulk``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from services.common.values import Value

COLLECTION_LIMIT = 200


class Operation(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UPSERT = "upsert"
    DELETE = "delete"


class Ingestion(enum.StrEnum):
    AUTOMATIC = "automatic"
    REST = "rest"
    BULK = "bulk"


class Transport(enum.StrEnum):
    REST = "rest"
    BULK = "bulk"


@dataclass(frozen=True)
class RecordWrite:
    """One record to write, from one WriteRecords command."""

    command_id: str
    tenant_id: str
    crm_object: str
    operation: Operation
    link_id: str
    fields: Mapping[str, Value]
    version: int
    external_id_field: str = ""
    external_id_value: str = ""
    record_id: str = ""
    # Commands folded into this write by coalescing; each gets its own outcome.
    command_ids: tuple[str, ...] = ()
    # The version each field came with, where coalescing folded in an older write's (versions.py).
    field_versions: Mapping[str, int] = field(default_factory=dict)

    @property
    def all_command_ids(self) -> tuple[str, ...]:
        return (*self.command_ids, self.command_id)

    def version_of(self, name: str) -> int:
        return self.field_versions.get(name, self.version)

    @property
    def record_key(self) -> tuple[str, str, str]:
        return (self.tenant_id, self.crm_object, self.link_id)


def coalesce(earlier: RecordWrite, later: RecordWrite) -> RecordWrite:
    """One write with the effect of ``earlier`` then ``later`` on the same record."""
    if 0 < later.version < earlier.version:
        # A replay of an older command (see versions.py): it must not overwrite newer values.
        return replace(earlier, command_ids=(*later.all_command_ids, *earlier.command_ids))
    folded = (*earlier.all_command_ids, *later.command_ids)
    if later.operation is Operation.DELETE:
        return replace(later, command_ids=folded)
    if earlier.operation is Operation.DELETE:
        # Recreated after a delete: the later write stands alone (an upsert recreates the record).
        return replace(later, command_ids=folded)
    operation = later.operation
    if earlier.operation in {Operation.CREATE, Operation.UPSERT}:
        # The record may not exist yet: keep creating it, with the newer values.
        operation = Operation.UPSERT if later.external_id_value or earlier.external_id_value else Operation.CREATE
    return replace(
        later,
        operation=operation,
        fields={**earlier.fields, **later.fields},
        field_versions={
            **{name: earlier.version_of(name) for name in earlier.fields},
            **{name: later.version_of(name) for name in later.fields},
        },
        record_id=later.record_id or earlier.record_id,
        external_id_field=later.external_id_field or earlier.external_id_field,
        external_id_value=later.external_id_value or earlier.external_id_value,
        command_ids=folded,
    )


GroupKey = tuple[str, str, Operation, str]


def group_key(write: RecordWrite) -> GroupKey:
    return (write.tenant_id, write.crm_object, write.operation, write.external_id_field)


@dataclass(frozen=True)
class Batch:
    tenant_id: str
    crm_object: str
    operation: Operation
    external_id_field: str
    transport: Transport
    writes: tuple[RecordWrite, ...]


@dataclass
class Batcher:
    """Holds writes until they make a full batch, or their group goes quiet for ``window``.

    A partial batch waits while writes keep arriving for its group (a steady stream fills batches
    to 200, the fewest calls), but never longer than ``max_wait`` after its oldest write.
    """

    window: timedelta = timedelta(milliseconds=200)
    max_wait: timedelta = timedelta(seconds=2)
    bulk_threshold: int = 2000
    ingestion: Ingestion = Ingestion.AUTOMATIC
    # Object -> parent reference field; batches are ordered by it so that records sharing a parent
    # land together, which reduces UNABLE_TO_LOCK_ROW on the parent.
    parent_fields: Mapping[str, str] = field(default_factory=dict)
    # A Bulk job waits for the window (a job costs ~7 calls however small it is) unless it holds
    # this many records; larger groups become several jobs.
    bulk_max_records: int = 10_000
    _pending: dict[tuple[str, str, str], RecordWrite] = field(default_factory=dict)
    _since: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    _last: dict[GroupKey, datetime] = field(default_factory=dict)

    def add(self, write: RecordWrite, now: datetime) -> frozenset[str]:
        """Queue ``write``, folded into a pending write to its record. Returns the fields of ``write``
        that were not kept: an older version arriving after a newer one is taken for a replay, whose
        fields the newer write already carries; any other field left out is worth a warning."""
        key = write.record_key
        earlier = self._pending.get(key)
        merged = coalesce(earlier, write) if earlier is not None else write
        self._pending[key] = merged
        self._since.setdefault(key, now)
        self._last[group_key(merged)] = now
        return frozenset(write.fields) - frozenset(merged.fields) if merged is not write else frozenset()

    def __len__(self) -> int:
        return len(self._pending)

    def discard(self, unwanted: Callable[[RecordWrite], bool]) -> list[RecordWrite]:
        """Remove and return the held writes that are ``unwanted``."""
        gone = [write for write in self._pending.values() if unwanted(write)]
        for write in gone:
            del self._pending[write.record_key]
            del self._since[write.record_key]
        return gone

    def due(self, now: datetime) -> list[Batch]:
        """Batches that are full, or whose group went quiet for the window, or waited ``max_wait``."""
        groups = self._groups()
        for gone in self._last.keys() - groups.keys():
            del self._last[gone]
        ready = []
        for key, writes in groups.items():
            oldest = min(self._since[w.record_key] for w in writes)
            expired = now - self._last[key] >= self.window or now - oldest >= self.max_wait
            full = self.bulk_max_records if self._transport(key[2], len(writes)) is Transport.BULK else COLLECTION_LIMIT
            if len(writes) >= full or expired:
                ready.extend(self._take(key, writes, flush_partial=expired))
        return ready

    def drain(self) -> list[Batch]:
        """Everything held, as batches (on shutdown or before committing offsets)."""
        return [
            batch for key, writes in self._groups().items() for batch in self._take(key, writes, flush_partial=True)
        ]

    def next_deadline(self) -> datetime | None:
        """The earliest moment a held partial batch becomes due (if no more writes arrive)."""
        deadlines = [
            min(self._last[key] + self.window, min(self._since[w.record_key] for w in writes) + self.max_wait)
            for key, writes in self._groups().items()
        ]
        return min(deadlines) if deadlines else None

    def _groups(self) -> dict[GroupKey, list[RecordWrite]]:
        groups: dict[GroupKey, list[RecordWrite]] = {}
        for write in self._pending.values():
            groups.setdefault(group_key(write), []).append(write)
        return groups

    def _take(self, key: GroupKey, writes: list[RecordWrite], *, flush_partial: bool) -> list[Batch]:
        tenant, crm_object, operation, ext_field = key
        transport = self._transport(operation, len(writes))
        parent = self.parent_fields.get(crm_object)
        if parent:
            writes = sorted(writes, key=lambda w: str(w.fields.get(parent) or ""))
        size = self.bulk_max_records if transport is Transport.BULK else COLLECTION_LIMIT
        chunks = [writes[i : i + size] for i in range(0, len(writes), size)]
        if not flush_partial and len(chunks[-1]) < size:
            chunks = chunks[:-1]
        batches = []
        for chunk in chunks:
            for write in chunk:
                del self._pending[write.record_key]
                del self._since[write.record_key]
            batches.append(Batch(tenant, crm_object, operation, ext_field, transport, tuple(chunk)))
        if sum(len(chunk) for chunk in chunks) == len(writes):
            self._last.pop(key, None)
        return batches

    def _transport(self, operation: Operation, size: int) -> Transport:
        # Bulk result rows are matched to writes by external id or record id; a plain create has neither.
        if operation is Operation.CREATE:
            return Transport.REST
        if self.ingestion is Ingestion.BULK:
            return Transport.BULK
        if self.ingestion is Ingestion.AUTOMATIC and size > self.bulk_threshold:
            return Transport.BULK
        return Transport.REST


def calls_needed(batches: Iterable[Batch]) -> int:
    """Salesforce calls the batches take (a Bulk job: create, upload, close, results ≈ 4, plus polls)."""
    return sum(1 if b.transport is Transport.REST else 4 for b in batches)

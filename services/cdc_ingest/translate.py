"""CDC events and re-read records → ``duplex.change.v1.RecordChanged``. Pure functions.

One CDC event may name several records (Salesforce merges identical changes made to several
records of one type in one transaction); it becomes one RecordChanged per record id, keyed
``tenant/object/record``. Gap and overflow events carry no values: they become repair orders
(:class:`GapOrder`, :class:`OverflowOrder`) that the worker carries out before it moves on.

Field naming: values are keyed by API name as REST and SOQL name them (``BillingCity``), so a
streamed change and a re-read snapshot of the same record agree. ``changed_fields`` and
``nulled_fields`` carry the contract's ``Parent.Child`` name of a compound component *and* its
API name, so that consumers matching either spelling see the change.

Event ids are UUIDv5 over what identifies the change at its source (the tenant, the replay id and
the record for a CDC event; the record and its SystemModstamp for a re-read), so a redelivered or
re-read change keeps its idempotency key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.cdc_ingest import bitmap
from services.cdc_ingest.contract import RecordChanged, is_deletion, read_message, set_field, streamed_message
from services.cdc_ingest.describe import MASTER_RECORD_ID
from services.cdc_ingest.event_schema import HEADER_FIELD, ChangeEventSchema, flat_name
from services.cdc_ingest.rejection import reading
from services.cdc_ingest.typed import COMPOUND_TYPES, FieldTypes, datetime_from_ms, typed
from services.common.change import Change, ChangeKind, Side
from services.common.values import Reference, Value

# Fixed forever: changing it would change every event id and defeat deduplication.
EVENT_ID_NAMESPACE = uuid.UUID("5b0e9a8e-8c3c-4f59-9d0e-3c2f3f6c1d11")

_KINDS = {
    "CREATE": ChangeKind.CREATE,
    "UPDATE": ChangeKind.UPDATE,
    "DELETE": ChangeKind.DELETE,
    "UNDELETE": ChangeKind.UNDELETE,
}
GAP_KINDS = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"})
OVERFLOW = "GAP_OVERFLOW"


@dataclass(frozen=True)
class GapOrder:
    """Re-read these records by id (a GAP_* event)."""

    entity: str
    record_ids: tuple[str, ...]
    change_type: str
    commit_time: datetime
    replay_id: bytes


@dataclass(frozen=True)
class OverflowOrder:
    """Re-read the entity from ``commit_time`` (less the overlap) on (GAP_OVERFLOW, or wildcard ids)."""

    entity: str
    commit_time: datetime
    replay_id: bytes
    reason: str


@dataclass(frozen=True)
class Translated:
    """What one CDC event turned into."""

    entity: str
    commit_time: datetime
    changes: tuple[RecordChanged, ...] = ()
    order: GapOrder | OverflowOrder | None = None


def origin_client(change_origin: str) -> str:
    """``com/salesforce/api/rest/62.0;client=duplex-acme`` → ``duplex-acme`` ('' when absent)."""
    for part in change_origin.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key.strip().lower() == "client":
            return value.strip()
    return ""


def stream_event_id(tenant_id: str, entity: str, replay_id: bytes, record_id: str) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"cdc/{tenant_id}/{entity}/{replay_id.hex()}/{record_id}"))


def snapshot_event_id(tenant_id: str, entity: str, record_id: str, modstamp: datetime, kind: ChangeKind) -> str:
    stamp = modstamp.astimezone(UTC).isoformat(timespec="milliseconds")
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"read/{tenant_id}/{entity}/{record_id}/{stamp}/{kind.value}"))


def _field_type(types: FieldTypes, name: str, fallback: str | None = None) -> str | None:
    info = types.get(name)
    return info.type if info is not None else fallback


def _flatten(schema: ChangeEventSchema, record: Mapping[str, Any], types: FieldTypes) -> dict[str, Value]:
    """Every object field of the payload by API name, compounds spread into their components."""
    values: dict[str, Value] = {}
    for top in schema.fields[1:]:
        raw = record.get(top.name)
        if top.is_compound:
            parts: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            for child in top.children:
                name = flat_name(top.name, child)
                values[name] = typed(_field_type(types, name), parts.get(child))
        elif _field_type(types, top.name) not in COMPOUND_TYPES:
            values[top.name] = typed(_field_type(types, top.name), raw)
    return values


def _names(schema: ChangeEventSchema, listed: Iterable[str]) -> tuple[set[str], set[str]]:
    """(names for changed/nulled_fields, API names whose values travel) for decoded bitmap names."""
    compounds = {f.name: f for f in schema.fields if f.is_compound}
    reported: set[str] = set()
    api_names: set[str] = set()
    for name in listed:
        parent, dot, child = name.partition(".")
        if dot:
            reported |= {name, flat_name(parent, child)}
            api_names.add(flat_name(parent, child))
        elif name in compounds:
            # A whole compound (all parts nulled): every part is named.
            reported.add(name)
            for part in compounds[name].children:
                reported |= {f"{name}.{part}", flat_name(name, part)}
                api_names.add(flat_name(name, part))
        else:
            reported.add(name)
            api_names.add(name)
    return reported, api_names


@reading("event")
def event_origin(record: Mapping[str, Any]) -> tuple[str, datetime]:
    """The object and commit time of a decoded event: all that an event of an object not synced needs."""
    header: Mapping[str, Any] = record[HEADER_FIELD]
    return str(header["entityName"]), datetime_from_ms(int(header["commitTimestamp"]))


@reading("event")
def translate_event(
    *,
    tenant_id: str,
    channel: str,
    replay_id: bytes,
    schema: ChangeEventSchema,
    record: Mapping[str, Any],
    field_types: FieldTypes,
) -> Translated:
    """One decoded CDC event → RecordChanged per record, or a repair order.

    Whatever a payload that decoded yet makes no sense raises (an unknown change type, a bitmap
    beyond the schema, a value of the wrong type) becomes an UndecodableError.
    """
    header: Mapping[str, Any] = record[HEADER_FIELD]
    entity, commit_time = event_origin(record)
    change_type = str(header["changeType"])
    record_ids: Sequence[str] = tuple(header.get("recordIds") or ())
    if change_type == OVERFLOW:
        return Translated(entity, commit_time, order=OverflowOrder(entity, commit_time, replay_id, "overflow"))
    if any("*" in rid for rid in record_ids):
        # A wildcard (some field type conversions) names no record we could re-read by id.
        return Translated(entity, commit_time, order=OverflowOrder(entity, commit_time, replay_id, "wildcard"))
    if change_type in GAP_KINDS:
        return Translated(
            entity, commit_time, order=GapOrder(entity, tuple(record_ids), change_type, commit_time, replay_id)
        )
    kind = _KINDS.get(change_type)
    if kind is None:
        raise ValueError(f"unknown changeType {change_type!r}")

    changed, changed_api = _names(schema, bitmap.expand(schema, list(header.get("changedFields") or ())))
    nulled, nulled_api = _names(schema, bitmap.expand(schema, list(header.get("nulledFields") or ())))
    all_values = _flatten(schema, record, field_types)
    if kind is ChangeKind.UPDATE:
        fields = {name: all_values.get(name) for name in changed_api | nulled_api}
    elif kind is ChangeKind.DELETE:
        fields = {}
    else:
        fields = all_values
    for name in nulled_api:
        fields[name] = None
    client = origin_client(str(header.get("changeOrigin") or ""))
    messages = []
    for record_id in record_ids:
        change = Change(
            event_id=stream_event_id(tenant_id, entity, replay_id, record_id),
            tenant_id=tenant_id,
            side=Side.CRM,
            object_type=entity,
            record_id=record_id,
            kind=kind,
            fields=fields,
            at=commit_time,
            changed=frozenset(changed) if kind is ChangeKind.UPDATE else frozenset(),
            nulled=frozenset(nulled),
            origin_client=client,
            transaction_key=str(header.get("transactionKey") or ""),
            sequence=int(header.get("sequenceNumber") or 0),
        )
        messages.append(streamed_message(change, replay_id=replay_id, channel=channel))
    return Translated(entity, commit_time, tuple(messages))


def _deleted_fields(values: Mapping[str, Value]) -> dict[str, Value]:
    """What a deletion carries: the merge winner (MasterRecordId) of a merge loser, else nothing."""
    master = values.get(MASTER_RECORD_ID)
    return {MASTER_RECORD_ID: master} if master is not None else {}


def set_master_records(changes: Iterable[RecordChanged], masters: Mapping[tuple[str, str], str]) -> int:
    """Put MasterRecordId on the DELETE changes of merge losers; ``masters``: (object, loser) → winner.

    Returns how many changes were given one.
    """
    count = 0
    for change in changes:
        master = masters.get((change.object_type, change.record_id))
        if master and is_deletion(change):
            set_field(change, MASTER_RECORD_ID, Reference(master))
            count += 1
    return count


def read_change(
    *,
    tenant_id: str,
    entity: str,
    record_id: str,
    values: Mapping[str, Value],
    modstamp: datetime,
    kind: ChangeKind,
    cursor: str,
    channel: str,
    missing_since: datetime | None = None,
) -> RecordChanged:
    """A record read by REST/SOQL/Bulk (poll, gap repair, backfill) as a RecordChanged.

    The origin commit time is the record's SystemModstamp: the time of the state that was read.
    ``missing_since``: the record is re-read because the change events after that time are missing
    (a gap, an overflow, expired replay ids). The read then also shows edits whose own events are
    still to come, and SystemModstamp dates every field by the record's last edit; dated no later
    than the missing stretch, it leaves each later edit to be decided by its own event's time.
    """
    change = Change(
        event_id=snapshot_event_id(tenant_id, entity, record_id, modstamp, kind),
        tenant_id=tenant_id,
        side=Side.CRM,
        object_type=entity,
        record_id=record_id,
        kind=kind,
        fields=_deleted_fields(values) if kind is ChangeKind.DELETE else dict(values),
        at=min(modstamp, missing_since) if missing_since else modstamp,
    )
    return read_message(change, cursor=cursor, channel=channel)

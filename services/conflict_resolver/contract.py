"""The resolver's events in and out: ChangeMapped and WriteSettled in domain terms, WriteRecords and
RecordChanged out. Nothing else in the resolver sees a generated protobuf module."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2

from services.common.change import Change, ChangeKind, Side
from services.common.contract import KIND_FROM_PB, SIDE_FROM_PB, set_fields, to_proto, to_value
from services.common.errors import InvalidEvent
from services.common.pauses import Way
from services.common.tenant_config import ObjectPair
from services.conflict_resolver.resolve import (
    AppUpdate,
    CrmWrite,
    FieldChange,
    LinkState,
    MappedChange,
    Operation,
    WriteError,
    WriteOutcome,
    WriteStatus,
)

ChangeMapped = change_mapped_pb2.ChangeMapped
WriteSettled = write_settled_pb2.WriteSettled

# Output ids derive from the input's, so a redelivered input republishes identical outputs.
NAMESPACE = uuid.UUID("0d6bb7a4-7a0e-4c1f-8f43-2f4f3e2d1a77")

_OPERATIONS = {
    Operation.UPSERT: write_records_pb2.OPERATION_UPSERT,
    Operation.UPDATE: write_records_pb2.OPERATION_UPDATE,
    Operation.DELETE: write_records_pb2.OPERATION_DELETE,
}
_OPERATIONS_FROM_PB = {v: k for k, v in _OPERATIONS.items()}
_STATUSES = {
    write_settled_pb2.WRITE_STATUS_SUCCEEDED: WriteStatus.SUCCEEDED,
    write_settled_pb2.WRITE_STATUS_REJECTED: WriteStatus.REJECTED,
}


def checked_shape(event: change_mapped_pb2.ChangeMapped) -> tuple[Side, ChangeKind]:
    """The side and kind of a ChangeMapped whose shape keeps the contract; InvalidEvent otherwise.

    All :func:`mapped_from_proto` checks but its values': what a change held by a pause is checked
    for before it is kept (its values are read, and checked, when it is decided)."""
    if not event.link_id or not event.object_pair:
        raise InvalidEvent("ChangeMapped without link_id or object_pair")
    side = SIDE_FROM_PB.get(event.origin_side)
    kind = KIND_FROM_PB.get(event.kind)
    # mapping never forwards a gap (cdc-ingest repairs gaps with snapshots): one here breaks the contract.
    if side is None or kind is None or kind is ChangeKind.GAP:
        raise InvalidEvent(f"ChangeMapped with origin_side {event.origin_side}, kind {event.kind}")
    if not event.HasField("origin_commit_time"):
        raise InvalidEvent("ChangeMapped without origin_commit_time")
    return side, kind


def mapped_from_proto(event: change_mapped_pb2.ChangeMapped) -> MappedChange:
    """The domain form of a ChangeMapped; InvalidEvent when it breaks the contract."""
    side, kind = checked_shape(event)
    try:
        fields = tuple(
            FieldChange(f.app_field, f.crm_field, to_value(f.app_value), to_value(f.crm_value), f.changed)
            for f in event.fields
        )
    except ValueError as error:
        raise InvalidEvent(f"ChangeMapped with an invalid value: {error}") from error
    return MappedChange(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        link_id=event.link_id,
        object_pair=event.object_pair,
        mapping_version=event.mapping_version,
        side=side,
        kind=kind,
        fields=fields,
        at=event.origin_commit_time.ToDatetime(tzinfo=UTC),
        app_record_id=event.app_record_id,
        crm_record_id=event.crm_record_id,
        external_id=event.external_id,
        origin_client=event.origin_client,
        source_event_id=event.source_event_id,
        dropped={d.field: d.reason for d in event.dropped_fields},
    )


def outcome_from_proto(event: write_settled_pb2.WriteSettled) -> WriteOutcome:
    """The domain form of a WriteSettled; InvalidEvent when it breaks the contract."""
    if not event.link_id:
        raise InvalidEvent("WriteSettled without link_id")
    return WriteOutcome(
        command_id=event.command_id,
        tenant_id=event.tenant_id,
        link_id=event.link_id,
        version=event.version,
        status=_STATUSES.get(event.status),
        operation=_OPERATIONS_FROM_PB.get(event.operation),
        record_id=event.record_id,
        created=event.created,
        errors=tuple(WriteError(e.status_code, e.message, tuple(e.fields)) for e in event.errors),
    )


def output_id(kind: str, event_id: str) -> str:
    return uuid.uuid5(NAMESPACE, f"{kind}/{event_id}").hex


def write_records(
    change: MappedChange, pair: ObjectPair, link: LinkState, write: CrmWrite
) -> write_records_pb2.WriteRecords:
    command = write_records_pb2.WriteRecords(
        command_id=output_id("crm", change.event_id),
        tenant_id=change.tenant_id,
        crm_object=pair.salesforce.object,
        operation=_OPERATIONS[write.operation],
        external_id_field=pair.salesforce.external_id_field if write.operation is Operation.UPSERT else "",
        # Backfills must not take live changes' API budget.
        priority=write_records_pb2.PRIORITY_BACKFILL
        if change.kind is ChangeKind.SNAPSHOT
        else write_records_pb2.PRIORITY_LIVE,
    )
    record = command.records.add(
        link_id=link.link_id,
        record_id=write.record_id,
        external_id_value=write.external_id_value,
        version=write.version,
    )
    set_fields(record.fields, write.fields)
    command.origin_commit_time.FromDatetime(change.at)
    return command


def app_update(
    change: MappedChange, pair: ObjectPair, client_id: str, update: AppUpdate, at: datetime | None = None
) -> record_changed_pb2.RecordChanged:
    """The RecordChanged an internal service applies. ``origin_client`` is the tenant's client id:
    the service publishes its resulting change with it, so its echo is recognised."""
    names = frozenset(update.fields)
    return to_proto(
        Change(
            event_id=output_id("app", change.event_id),
            tenant_id=change.tenant_id,
            side=Side.CRM,
            object_type=pair.app.object,
            record_id=update.record_id,
            kind=update.kind,
            fields=dict(update.fields),
            at=at or change.at,
            changed=names if update.kind is ChangeKind.UPDATE else frozenset(),
            nulled=frozenset(n for n, v in update.fields.items() if v is None),
            origin_client=client_id,
            external_id=update.external_id,
        )
    )


def held_output(way: Way, encoded: bytes) -> write_records_pb2.WriteRecords | record_changed_pb2.RecordChanged:
    """An output held by a pause (:mod:`services.conflict_resolver.holding`), as it was encoded."""
    if way is Way.TO_CRM:
        return write_records_pb2.WriteRecords.FromString(encoded)
    return record_changed_pb2.RecordChanged.FromString(encoded)

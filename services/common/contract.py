"""The shared protobuf edge: ``duplex.change.v1`` values and record changes, and the enum maps.

Every service reasons in the domain types of :mod:`services.common.change` and
:mod:`services.common.values`; protobuf messages are translated here and in each service's own
``contract`` module, nowhere else (``tests/unit/architecture/test_layout.py`` enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from duplex.change.v1 import record_changed_pb2, value_pb2
from google.protobuf.internal.containers import MessageMap

from services.common.change import Change, ChangeKind, InvalidChangeError, Side
from services.common.values import Reference, Value

RecordChanged = record_changed_pb2.RecordChanged
FieldValue = value_pb2.FieldValue

SIDE_TO_PB = {Side.APP: record_changed_pb2.SIDE_APP, Side.CRM: record_changed_pb2.SIDE_CRM}
KIND_TO_PB = {
    ChangeKind.CREATE: record_changed_pb2.CHANGE_KIND_CREATE,
    ChangeKind.UPDATE: record_changed_pb2.CHANGE_KIND_UPDATE,
    ChangeKind.DELETE: record_changed_pb2.CHANGE_KIND_DELETE,
    ChangeKind.UNDELETE: record_changed_pb2.CHANGE_KIND_UNDELETE,
    ChangeKind.GAP: record_changed_pb2.CHANGE_KIND_GAP,
    ChangeKind.SNAPSHOT: record_changed_pb2.CHANGE_KIND_SNAPSHOT,
}
SIDE_FROM_PB = {v: k for k, v in SIDE_TO_PB.items()}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}


def to_value(field_value: value_pb2.FieldValue) -> Value:
    """The Python value of a FieldValue (an unset FieldValue is null)."""
    kind = field_value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "string_value":
        return field_value.string_value
    if kind == "int_value":
        return field_value.int_value
    if kind == "decimal_value":
        try:
            return Decimal(field_value.decimal_value)
        except InvalidOperation as exc:
            msg = f"not a decimal: {field_value.decimal_value!r}"
            raise ValueError(msg) from exc
    if kind == "double_value":
        return field_value.double_value
    if kind == "bool_value":
        return field_value.bool_value
    if kind == "date_value":
        d = field_value.date_value
        return date(d.year, d.month, d.day)
    if kind == "datetime_value":
        return field_value.datetime_value.ToDatetime(tzinfo=UTC)
    if kind == "reference_value":
        return Reference(field_value.reference_value)
    return tuple(field_value.multi_value.values)


def to_field_value(value: Value) -> value_pb2.FieldValue:
    """The FieldValue of a Python value. Booleans are checked before ints (bool is an int)."""
    if value is None:
        return value_pb2.FieldValue(null_value=True)
    if isinstance(value, bool):
        return value_pb2.FieldValue(bool_value=value)
    if isinstance(value, Reference):
        return value_pb2.FieldValue(reference_value=str(value))
    if isinstance(value, str):
        return value_pb2.FieldValue(string_value=value)
    if isinstance(value, int):
        return value_pb2.FieldValue(int_value=value)
    if isinstance(value, Decimal):
        return value_pb2.FieldValue(decimal_value=str(value))
    if isinstance(value, float):
        return value_pb2.FieldValue(double_value=value)
    if isinstance(value, datetime):
        result = value_pb2.FieldValue()
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        result.datetime_value.FromDatetime(aware.astimezone(UTC))
        return result
    if isinstance(value, date):
        return value_pb2.FieldValue(date_value=value_pb2.Date(year=value.year, month=value.month, day=value.day))
    return value_pb2.FieldValue(multi_value=value_pb2.MultiValue(values=list(value)))


def from_proto(message: record_changed_pb2.RecordChanged) -> Change:
    """The domain change of a RecordChanged; raises InvalidChangeError when it breaks the contract."""
    missing = [name for name in ("event_id", "tenant_id", "object_type") if not getattr(message, name)]
    if missing:
        raise InvalidChangeError(f"missing {', '.join(missing)}")
    if message.origin_side not in SIDE_FROM_PB:
        raise InvalidChangeError(f"unknown origin_side {message.origin_side}")
    if message.kind not in KIND_FROM_PB:
        raise InvalidChangeError(f"unknown kind {message.kind}")
    try:
        fields = {name: to_value(value) for name, value in message.fields.items()}
    except ValueError as exc:
        raise InvalidChangeError(str(exc)) from exc
    at = message.origin_commit_time.ToDatetime(tzinfo=UTC) if message.HasField("origin_commit_time") else None
    if at is None:
        raise InvalidChangeError("missing origin_commit_time")
    return Change(
        event_id=message.event_id,
        tenant_id=message.tenant_id,
        side=SIDE_FROM_PB[message.origin_side],
        object_type=message.object_type,
        record_id=message.record_id,
        kind=KIND_FROM_PB[message.kind],
        fields=fields,
        at=at,
        changed=frozenset(message.changed_fields),
        nulled=frozenset(message.nulled_fields),
        origin_client=message.origin_client,
        external_id=message.external_id,
        transaction_key=message.transaction_key,
        sequence=message.sequence,
    )


def set_fields(target: MessageMap[str, value_pb2.FieldValue], fields: Mapping[str, Value]) -> None:
    """Write ``fields`` into a message's ``map<string, FieldValue>``."""
    for name, value in fields.items():
        target[name].CopyFrom(to_field_value(value))


def to_proto(change: Change) -> record_changed_pb2.RecordChanged:
    """The RecordChanged of a domain change."""
    message = record_changed_pb2.RecordChanged(
        event_id=change.event_id,
        tenant_id=change.tenant_id,
        origin_side=SIDE_TO_PB[change.side],
        object_type=change.object_type,
        record_id=change.record_id,
        kind=KIND_TO_PB[change.kind],
        changed_fields=sorted(change.changed),
        nulled_fields=sorted(change.nulled),
        origin_client=change.origin_client,
        external_id=change.external_id,
        transaction_key=change.transaction_key,
        sequence=change.sequence,
    )
    set_fields(message.fields, change.fields)
    message.origin_commit_time.FromDatetime(change.at.astimezone(UTC))
    return message

"""A record change in domain terms, and its protobuf form (``duplex.change.v1.RecordChanged``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from duplex.change.v1 import record_changed_pb2

from services.common.values import Value, to_field_value, to_value


class Side(enum.StrEnum):
    """Which side of the sync a change comes from or a value goes to."""

    APP = "app"
    CRM = "crm"

    @property
    def other(self) -> Side:
        return Side.CRM if self is Side.APP else Side.APP


class ChangeKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNDELETE = "undelete"
    GAP = "gap"
    SNAPSHOT = "snapshot"

    @property
    def carries_full_record(self) -> bool:
        """Creates, undeletes and snapshots send every known field; updates only the changed ones."""
        return self in {ChangeKind.CREATE, ChangeKind.UNDELETE, ChangeKind.SNAPSHOT}


_SIDE_TO_PB = {Side.APP: record_changed_pb2.SIDE_APP, Side.CRM: record_changed_pb2.SIDE_CRM}
_KIND_TO_PB = {
    ChangeKind.CREATE: record_changed_pb2.CHANGE_KIND_CREATE,
    ChangeKind.UPDATE: record_changed_pb2.CHANGE_KIND_UPDATE,
    ChangeKind.DELETE: record_changed_pb2.CHANGE_KIND_DELETE,
    ChangeKind.UNDELETE: record_changed_pb2.CHANGE_KIND_UNDELETE,
    ChangeKind.GAP: record_changed_pb2.CHANGE_KIND_GAP,
    ChangeKind.SNAPSHOT: record_changed_pb2.CHANGE_KIND_SNAPSHOT,
}
_SIDE_FROM_PB = {v: k for k, v in _SIDE_TO_PB.items()}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


@dataclass(frozen=True)
class Change:
    """One record changed on one side."""

    event_id: str
    tenant_id: str
    side: Side
    object_type: str
    record_id: str
    kind: ChangeKind
    fields: Mapping[str, Value]
    at: datetime
    changed: frozenset[str] = frozenset()
    nulled: frozenset[str] = frozenset()
    origin_client: str = ""
    external_id: str = ""
    transaction_key: str = ""
    sequence: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    def was_changed(self, name: str) -> bool:
        """Whether ``name`` is part of this change (case-insensitively, as Salesforce names are)."""
        if self.kind.carries_full_record:
            return True
        lowered = name.lower()
        return any(n.lower() == lowered for n in self.changed | self.nulled)


class InvalidChangeError(ValueError):
    """A RecordChanged that breaks the contract (unknown side or kind, missing ids)."""


def from_proto(message: record_changed_pb2.RecordChanged) -> Change:
    """The domain change of a RecordChanged; raises InvalidChangeError when it breaks the contract."""
    missing = [name for name in ("event_id", "tenant_id", "object_type") if not getattr(message, name)]
    if missing:
        raise InvalidChangeError(f"missing {', '.join(missing)}")
    if message.origin_side not in _SIDE_FROM_PB:
        raise InvalidChangeError(f"unknown origin_side {message.origin_side}")
    if message.kind not in _KIND_FROM_PB:
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
        side=_SIDE_FROM_PB[message.origin_side],
        object_type=message.object_type,
        record_id=message.record_id,
        kind=_KIND_FROM_PB[message.kind],
        fields=fields,
        at=at,
        changed=frozenset(message.changed_fields),
        nulled=frozenset(message.nulled_fields),
        origin_client=message.origin_client,
        external_id=message.external_id,
        transaction_key=message.transaction_key,
        sequence=message.sequence,
    )


def to_proto(change: Change) -> record_changed_pb2.RecordChanged:
    """The RecordChanged of a domain change."""
    message = record_changed_pb2.RecordChanged(
        event_id=change.event_id,
        tenant_id=change.tenant_id,
        origin_side=_SIDE_TO_PB[change.side],
        object_type=change.object_type,
        record_id=change.record_id,
        kind=_KIND_TO_PB[change.kind],
        changed_fields=sorted(change.changed),
        nulled_fields=sorted(change.nulled),
        origin_client=change.origin_client,
        external_id=change.external_id,
        transaction_key=change.transaction_key,
        sequence=change.sequence,
    )
    for name, value in change.fields.items():
        message.fields[name].CopyFrom(to_field_value(value))
    message.origin_commit_time.FromDatetime(change.at.astimezone(UTC))
    return message

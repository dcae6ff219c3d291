"""The admin service's edge to Duplex's protobuf contracts: what each topic that can refuse input
carries, so that a dead letter's record can be shown decoded; and the resend requests it sends apps."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

from services.common.topics import Topic

MESSAGES: Final[Mapping[Topic, type[Message]]] = {
    Topic.APP_CHANGES: record_changed_pb2.RecordChanged,
    Topic.CRM_CHANGES: record_changed_pb2.RecordChanged,
    Topic.MAPPED_CHANGES: change_mapped_pb2.ChangeMapped,
    Topic.CRM_WRITES: write_records_pb2.WriteRecords,
    Topic.WRITE_OUTCOMES: write_settled_pb2.WriteSettled,
}


def decoded(topic: Topic, value: bytes) -> dict[str, Any] | None:
    """``value`` decoded as ``topic``'s message (field names as in the .proto), None when it is not one."""
    message = MESSAGES[topic]()
    try:
        message.ParseFromString(value)
    except DecodeError:
        return None
    return MessageToDict(message, preserving_proto_field_name=True)


def resend_request(
    *, event_id: str, tenant_id: str, app_object: str, record_id: str, link_id: str, at: datetime
) -> bytes:
    """An app-update asking the app to publish record ``record_id`` of ``app_object`` again, whole.

    No ``origin_client``: an app that copies an update's tag into the change it makes (as the
    contract asks for applied updates) must not tag its answer as Duplex's own write, or the
    conflict-resolver would drop it as an echo. ``origin_side`` is that of every app-update.
    """
    message = record_changed_pb2.RecordChanged(
        event_id=event_id,
        tenant_id=tenant_id,
        origin_side=record_changed_pb2.SIDE_CRM,
        object_type=app_object,
        record_id=record_id,
        kind=record_changed_pb2.CHANGE_KIND_RESEND,
        external_id=link_id,
    )
    message.origin_commit_time.FromDatetime(at.astimezone(UTC))
    return message.SerializeToString()

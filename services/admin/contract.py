"""The admin service's edge to Duplex's protobuf contracts: what each topic that can refuse input
carries, so that a dead letter's record can be shown decoded."""

from __future__ import annotations

from collections.abc import Mapping
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

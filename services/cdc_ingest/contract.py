"""cdc-ingest's protobuf edge: the Pub/Sub responses it reads and the RecordChanged it publishes.

:mod:`services.cdc_ingest.translate` decides what a change is, as a domain
:class:`~services.common.change.Change`; here it becomes the message published on crm-changes,
with its position in the source (a replay id, or a tuple cursor). The rest of cdc-ingest handles
the messages through the names below; besides this module only the Pub/Sub client
(:mod:`services.cdc_ingest.pubsub`, a gRPC adapter) imports generated code
(``tests/unit/architecture/test_layout.py``).
"""

from __future__ import annotations

from duplex.change.v1 import record_changed_pb2
from eventbus.v1 import pubsub_api_pb2

from services.common.change import Change
from services.common.contract import to_field_value, to_proto
from services.common.values import Value

RecordChanged = record_changed_pb2.RecordChanged
FetchResponse = pubsub_api_pb2.FetchResponse
ConsumerEvent = pubsub_api_pb2.ConsumerEvent


def streamed_message(change: Change, *, replay_id: bytes, channel: str) -> RecordChanged:
    """A change delivered by the CDC stream, positioned by its replay id on ``channel``."""
    message = to_proto(change)
    message.source_position.replay_id = replay_id
    message.source_position.channel = channel
    return message


def read_message(change: Change, *, cursor: str, channel: str) -> RecordChanged:
    """A record read by REST, SOQL or Bulk, positioned by its tuple cursor."""
    message = to_proto(change)
    message.source_position.cursor = cursor
    message.source_position.channel = channel
    return message


def is_update(message: RecordChanged) -> bool:
    return message.kind == record_changed_pb2.CHANGE_KIND_UPDATE


def is_deletion(message: RecordChanged) -> bool:
    return message.kind == record_changed_pb2.CHANGE_KIND_DELETE


def set_field(message: RecordChanged, name: str, value: Value) -> None:
    message.fields[name].CopyFrom(to_field_value(value))

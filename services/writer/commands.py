"""WriteRecords commands in, record writes out; results in, WriteSettled outcomes out. Pure.

Each delivery of a command gets its own token (``RecordWrite.command_id``), so that the same
command delivered twice (a replay after a rebalance) is tracked as two deliveries, each with its
own Kafka offset to release. The outcome carries the command's real id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidEvent
from services.common.values import Value, to_field_value, to_value
from services.writer.batching import Operation, RecordWrite
from services.writer.offsets import Partition
from services.writer.payload import ItemError, Outcome, WriteResult

_OPERATIONS = {
    write_records_pb2.OPERATION_CREATE: Operation.CREATE,
    write_records_pb2.OPERATION_UPDATE: Operation.UPDATE,
    write_records_pb2.OPERATION_UPSERT: Operation.UPSERT,
    write_records_pb2.OPERATION_DELETE: Operation.DELETE,
}
_PROTO_OPERATIONS = {v: k for k, v in _OPERATIONS.items()}

# Salesforce's own code for a call without the id it needs; used for writes refused before any call.
MISSING_ARGUMENT = "MISSING_ARGUMENT"


@dataclass(frozen=True)
class Delivery:
    """One consumed WriteRecords record: what its outcomes need, and where its offset is."""

    token: str
    command_id: str
    tenant_id: str
    partition: Partition
    offset: int
    backfill: bool
    origin_commit_time: Timestamp | None
    # The consumed record's raw form, for dead-letter headers.
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None


def record_writes(command: write_records_pb2.WriteRecords, token: str) -> tuple[list[RecordWrite], list[WriteResult]]:
    """The command's writes, one per distinct link, and the ones refused without a call.

    Raises :class:`InvalidEvent` for a command that breaks the contract as a whole.
    """
    operation = _OPERATIONS.get(command.operation)
    if operation is None:
        raise InvalidEvent(f"WriteRecords {command.command_id}: operation {command.operation} is not supported")
    if not command.crm_object:
        raise InvalidEvent(f"WriteRecords {command.command_id}: no crm_object")
    by_link: dict[str, RecordWrite] = {}
    for record in command.records:
        if not record.link_id:
            raise InvalidEvent(f"WriteRecords {command.command_id}: a record without link_id")
        try:
            fields: Mapping[str, Value] = {name: to_value(v) for name, v in record.fields.items()}
        except ValueError as exc:
            raise InvalidEvent(f"WriteRecords {command.command_id}: {exc}") from exc
        op = operation
        # Creates are upserts on the external id whenever there is one: a replayed create then
        # finds the record it made the first time instead of making a duplicate.
        if op is Operation.CREATE and record.external_id_value and command.external_id_field:
            op = Operation.UPSERT
        write = RecordWrite(
            command_id=token,
            tenant_id=command.tenant_id,
            crm_object=command.crm_object,
            operation=op,
            link_id=record.link_id,
            fields=fields,
            version=record.version,
            external_id_field=command.external_id_field,
            external_id_value=record.external_id_value,
            record_id=record.record_id,
        )
        earlier = by_link.get(record.link_id)
        # The same link twice in one command: the later entry wins, as it would in two commands.
        by_link[record.link_id] = write if earlier is None else _merge(earlier, write)
    writes, refused = [], []
    for write in by_link.values():
        missing = _missing(write)
        if missing:
            refused.append(WriteResult(write, Outcome.REJECTED, errors=(ItemError(MISSING_ARGUMENT, missing),)))
        else:
            writes.append(write)
    return writes, refused


def _merge(earlier: RecordWrite, later: RecordWrite) -> RecordWrite:
    return replace(later, fields={**earlier.fields, **later.fields})


def _missing(write: RecordWrite) -> str:
    if write.operation is Operation.UPSERT and not (write.external_id_field and write.external_id_value):
        return "an upsert needs external_id_field and external_id_value"
    if write.operation in {Operation.UPDATE, Operation.DELETE} and not write.record_id:
        return f"{write.operation} needs the record id"
    return ""


def settled_events(
    result: WriteResult,
    deliveries: Mapping[str, Delivery],
    *,
    attempts: int,
    settled_at: datetime,
) -> list[tuple[Delivery, write_settled_pb2.WriteSettled]]:
    """One WriteSettled per delivery folded into the write (coalesced commands included)."""
    write = result.write
    stamp = Timestamp()
    stamp.FromDatetime(settled_at)
    status = (
        write_settled_pb2.WRITE_STATUS_SUCCEEDED
        if result.outcome is Outcome.SUCCEEDED
        else write_settled_pb2.WRITE_STATUS_REJECTED
    )
    events = []
    for token in dict.fromkeys(write.all_command_ids):
        delivery = deliveries.get(token)
        if delivery is None:
            continue
        event = write_settled_pb2.WriteSettled(
            command_id=delivery.command_id,
            tenant_id=write.tenant_id,
            link_id=write.link_id,
            crm_object=write.crm_object,
            operation=_PROTO_OPERATIONS[write.operation],
            status=status,
            record_id=result.record_id or write.record_id,
            external_id_value=write.external_id_value,
            created=result.created,
            errors=[
                write_settled_pb2.WriteError(status_code=e.status_code, message=e.message, fields=list(e.fields))
                for e in result.errors
            ],
            version=write.version,
            attempts=attempts,
            settled_at=stamp,
        )
        if delivery.origin_commit_time is not None:
            event.origin_commit_time.CopyFrom(delivery.origin_commit_time)
        events.append((delivery, event))
    return events


def dead_letter_command(result: WriteResult, delivery: Delivery) -> write_records_pb2.WriteRecords:
    """The rejected write as a command of its own, ready to be replayed after the cause is fixed."""
    write = result.write
    record = write_records_pb2.RecordWrite(
        link_id=write.link_id,
        record_id=write.record_id,
        external_id_value=write.external_id_value,
        version=write.version,
    )
    for name, value in write.fields.items():
        record.fields[name].CopyFrom(to_field_value(value))
    command = write_records_pb2.WriteRecords(
        command_id=delivery.command_id,
        tenant_id=write.tenant_id,
        crm_object=write.crm_object,
        operation=_PROTO_OPERATIONS[write.operation],
        external_id_field=write.external_id_field,
        records=[record],
        priority=write_records_pb2.PRIORITY_BACKFILL if delivery.backfill else write_records_pb2.PRIORITY_LIVE,
    )
    if delivery.origin_commit_time is not None:
        command.origin_commit_time.CopyFrom(delivery.origin_commit_time)
    return command

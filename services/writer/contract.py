"""The writer's protobuf edge: WriteRecords in as a domain :class:`Command`; WriteSettled outcomes
and dead-lettered WriteRecords out."""

from __future__ import annotations

from datetime import UTC, datetime

from duplex.writer.v1 import write_records_pb2, write_settled_pb2

from services.common.contract import set_fields, to_value
from services.common.errors import InvalidEvent
from services.writer.batching import Operation
from services.writer.commands import Command, CommandRecord, Delivery
from services.writer.payload import Outcome, WriteResult

WriteRecords = write_records_pb2.WriteRecords
WriteSettled = write_settled_pb2.WriteSettled

_OPERATIONS = {
    write_records_pb2.OPERATION_CREATE: Operation.CREATE,
    write_records_pb2.OPERATION_UPDATE: Operation.UPDATE,
    write_records_pb2.OPERATION_UPSERT: Operation.UPSERT,
    write_records_pb2.OPERATION_DELETE: Operation.DELETE,
}
_PROTO_OPERATIONS = {v: k for k, v in _OPERATIONS.items()}
# A RETRY is never settled, so it has no status.
_STATUSES = {
    Outcome.SUCCEEDED: write_settled_pb2.WRITE_STATUS_SUCCEEDED,
    Outcome.REJECTED: write_settled_pb2.WRITE_STATUS_REJECTED,
    Outcome.SUPERSEDED: write_settled_pb2.WRITE_STATUS_SUPERSEDED,
}


def command_of(message: write_records_pb2.WriteRecords) -> Command:
    """The domain form of a WriteRecords; :class:`InvalidEvent` when it breaks the contract as a whole."""
    operation = _OPERATIONS.get(message.operation)
    if operation is None:
        raise InvalidEvent(f"WriteRecords {message.command_id}: operation {message.operation} is not supported")
    if not message.crm_object:
        raise InvalidEvent(f"WriteRecords {message.command_id}: no crm_object")
    records = []
    for record in message.records:
        if not record.link_id:
            raise InvalidEvent(f"WriteRecords {message.command_id}: a record without link_id")
        try:
            fields = {name: to_value(v) for name, v in record.fields.items()}
        except ValueError as exc:
            raise InvalidEvent(f"WriteRecords {message.command_id}: {exc}") from exc
        records.append(
            CommandRecord(
                link_id=record.link_id,
                fields=fields,
                version=record.version,
                external_id_value=record.external_id_value,
                record_id=record.record_id,
            )
        )
    return Command(
        command_id=message.command_id,
        tenant_id=message.tenant_id,
        crm_object=message.crm_object,
        operation=operation,
        external_id_field=message.external_id_field,
        records=tuple(records),
        backfill=message.priority == write_records_pb2.PRIORITY_BACKFILL,
        origin_commit_time=(
            message.origin_commit_time.ToDatetime(tzinfo=UTC) if message.HasField("origin_commit_time") else None
        ),
    )


def write_settled(
    result: WriteResult, delivery: Delivery, *, attempts: int, settled_at: datetime
) -> write_settled_pb2.WriteSettled:
    """The outcome of ``result`` for one of the deliveries folded into its write."""
    write = result.write
    status = _STATUSES[result.outcome]
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
    )
    event.settled_at.FromDatetime(settled_at)
    if delivery.origin_commit_time is not None:
        event.origin_commit_time.FromDatetime(delivery.origin_commit_time)
    return event


def dead_letter_command(result: WriteResult, delivery: Delivery) -> write_records_pb2.WriteRecords:
    """The rejected write as a command of its own, ready to be replayed after the cause is fixed."""
    write = result.write
    record = write_records_pb2.RecordWrite(
        link_id=write.link_id,
        record_id=write.record_id,
        external_id_value=write.external_id_value,
        version=write.version,
    )
    set_fields(record.fields, write.fields)
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
        command.origin_commit_time.FromDatetime(delivery.origin_commit_time)
    return command

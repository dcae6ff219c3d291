"""WriteRecords commands in, record writes out. Pure: domain types only (the protobuf forms are
translated in :mod:`services.writer.contract`).

Each delivery of a command gets its own token (``RecordWrite.command_id``), so that the same
command delivered twice (a replay after a rebalance) is tracked as two deliveries, each with its
own Kafka offset to release. The outcome carries the command's real id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from services.common.values import Value
from services.writer.batching import Operation, RecordWrite
from services.writer.offsets import Partition
from services.writer.payload import ItemError, Outcome, WriteResult

# Salesforce's own code for a call without the id it needs; used for writes refused before any call.
MISSING_ARGUMENT = "MISSING_ARGUMENT"


@dataclass(frozen=True)
class CommandRecord:
    """One record of a command, as the conflict-resolver asked for it."""

    link_id: str
    fields: Mapping[str, Value]
    version: int
    external_id_value: str
    record_id: str


@dataclass(frozen=True)
class Command:
    """A WriteRecords command that keeps the contract (see :func:`services.writer.contract.command_of`)."""

    command_id: str
    tenant_id: str
    crm_object: str
    operation: Operation
    external_id_field: str
    records: tuple[CommandRecord, ...]
    backfill: bool
    origin_commit_time: datetime | None


@dataclass(frozen=True)
class Delivery:
    """One consumed WriteRecords record: what its outcomes need, and where its offset is."""

    token: str
    command_id: str
    tenant_id: str
    partition: Partition
    offset: int
    backfill: bool
    origin_commit_time: datetime | None
    # The consumed record's raw form, for dead-letter headers.
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None
    # The command as it was consumed, for parking it (:mod:`services.writer.parking`).
    value: bytes = b""


def record_writes(command: Command, token: str) -> tuple[list[RecordWrite], list[WriteResult]]:
    """The command's writes, one per distinct link, and the ones refused without a call."""
    by_link: dict[str, RecordWrite] = {}
    for record in command.records:
        operation = command.operation
        # Creates are upserts on the external id whenever there is one: a replayed create then
        # finds the record it made the first time instead of making a duplicate.
        if operation is Operation.CREATE and record.external_id_value and command.external_id_field:
            operation = Operation.UPSERT
        write = RecordWrite(
            command_id=token,
            tenant_id=command.tenant_id,
            crm_object=command.crm_object,
            operation=operation,
            link_id=record.link_id,
            fields=record.fields,
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

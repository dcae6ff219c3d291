"""Offset tracking, payloads and result parsing of the writer (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from duplex.writer.v1 import write_records_pb2

from services.common.contract import to_field_value
from services.common.errors import InvalidEvent
from services.writer.batching import Batch, Operation, RecordWrite, Transport
from services.writer.commands import MISSING_ARGUMENT, record_writes
from services.writer.contract import command_of
from services.writer.offsets import OffsetTracker
from services.writer.payload import (
    Outcome,
    bulk_csv,
    bulk_results,
    collection_request,
    collection_results,
    parse_bulk_error,
    to_salesforce,
)

pytestmark = pytest.mark.unit
P = ("crm-writes", 0)


def test_the_committed_position_waits_for_the_oldest_unsettled_command() -> None:
    tracker = OffsetTracker()
    tracker.seen(P, 0, 2)
    tracker.seen(P, 1, 1)
    tracker.seen(P, 2, 1)
    tracker.done(P, 1)
    tracker.done(P, 2)
    assert tracker.committable() == {P: 0}
    tracker.done(P, 0)
    assert tracker.committable() == {P: 0}  # one of offset 0's two records is still out
    tracker.done(P, 0)
    assert tracker.committable() == {P: 3}
    tracker.committed({P: 3})
    assert tracker.committable() == {}


def test_a_revoked_partition_is_forgotten_and_late_outcomes_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.seen(P, 5, 1)
    tracker.forget([P])
    tracker.done(P, 5)
    assert tracker.committable() == {}
    assert tracker.unfinished() == 0


def write(n: int, op: Operation = Operation.UPSERT, **fields: object) -> RecordWrite:
    return RecordWrite(
        command_id=str(n),
        tenant_id="acme",
        crm_object="Account",
        operation=op,
        link_id=f"l{n}",
        fields=fields,  # type: ignore[arg-type]
        version=1,
        external_id_field="Duplex_Id__c",
        external_id_value=f"x{n}",
        record_id=f"001000000000{n:03d}AAA" if op is not Operation.UPSERT else "",
    )


def batch(*writes: RecordWrite, transport: Transport = Transport.REST) -> Batch:
    return Batch("acme", "Account", writes[0].operation, "Duplex_Id__c", transport, writes)


def test_values_take_salesforce_forms() -> None:
    assert to_salesforce(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)) == "2024-05-01T12:00:00.123+0000"
    # Four-digit years, as Salesforce reads them (strftime's %Y leaves year 1 as "1").
    assert to_salesforce(datetime(1, 1, 2, tzinfo=UTC)) == "0001-01-02T00:00:00.000+0000"
    assert to_salesforce(datetime(999, 12, 31, 23, 59, 59, 999999)) == "0999-12-31T23:59:59.999+0000"
    assert to_salesforce(date(1, 1, 1)) == "0001-01-01"
    assert to_salesforce(date(2024, 5, 1)) == "2024-05-01"
    assert to_salesforce(Decimal("12345678901234567890.01")) == "12345678901234567890.01"
    assert to_salesforce(("A", "B")) == "A;B"


def test_upserts_key_on_the_external_id_and_never_send_it_in_the_body_twice() -> None:
    request = collection_request(batch(write(1, Name="A", duplex_id__c="other")))
    assert (request.method, request.path) == ("PATCH", "/composite/sobjects/Account/Duplex_Id__c")
    assert request.json["allOrNone"] is False
    assert request.json["records"] == [{"attributes": {"type": "Account"}, "Name": "A", "Duplex_Id__c": "x1"}]


def test_rollback_placeholders_and_locks_are_retried_and_a_redelete_succeeds() -> None:
    b = batch(write(1, Operation.DELETE), write(2, Operation.DELETE), write(3, Operation.DELETE))
    body = [
        {"success": False, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "gone"}]},
        {"success": False, "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": ""}]},
        {"success": False, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": ""}]},
    ]
    assert [r.outcome for r in collection_results(b, body)] == [Outcome.SUCCEEDED, Outcome.RETRY, Outcome.RETRY]


def test_bulk_rows_are_matched_back_by_key_and_missing_ones_retried() -> None:
    b = batch(write(1, Name="A, Inc"), write(2, Name=None), write(3, Name="C"), transport=Transport.BULK)
    assert bulk_csv(b) == 'Duplex_Id__c,Name\nx1,"A, Inc"\nx2,#N/A\nx3,C\n'
    successful = '"sf__Id","sf__Created","Duplex_Id__c","Name"\n"001A","true","x1","A, Inc"\n'
    failed = (
        '"sf__Id","sf__Error","Duplex_Id__c","Name"\n'
        '"","REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --","x2","#N/A"\n'
    )
    results, leftover = bulk_results(b, successful, failed, "")
    assert [(r.write.link_id, r.outcome, r.code) for r in results] == [
        ("l1", Outcome.SUCCEEDED, ""),
        ("l2", Outcome.REJECTED, "REQUIRED_FIELD_MISSING"),
    ]
    assert results[1].errors[0].fields == ("Name",)
    assert [w.link_id for w in leftover] == ["l3"]


def test_bulk_error_text_with_colons_in_the_message() -> None:
    error = parse_bulk_error(
        "DUPLICATE_VALUE:duplicate value found: Duplex_Id__c duplicates value on record with id: 001:Duplex_Id__c --"
    )
    assert error.status_code == "DUPLICATE_VALUE"
    assert error.fields == ("Duplex_Id__c",)
    assert error.message.startswith("duplicate value found: ")


def test_creates_with_an_external_id_become_upserts_and_incomplete_writes_are_refused() -> None:
    command = write_records_pb2.WriteRecords(
        command_id="c1",
        tenant_id="acme",
        crm_object="Account",
        operation=write_records_pb2.OPERATION_CREATE,
        external_id_field="Duplex_Id__c",
    )
    command.records.add(link_id="l1", external_id_value="x1").fields["Name"].CopyFrom(to_field_value("A"))
    command.records.add(link_id="l2")
    writes, refused = record_writes(command_of(command), "t1")
    assert [(w.link_id, w.operation) for w in writes] == [("l1", Operation.UPSERT), ("l2", Operation.CREATE)]
    assert refused == []

    command.operation = write_records_pb2.OPERATION_DELETE
    writes, refused = record_writes(command_of(command), "t2")
    assert writes == []
    assert {r.code for r in refused} == {MISSING_ARGUMENT}

    command.operation = write_records_pb2.OPERATION_UNSPECIFIED
    with pytest.raises(InvalidEvent):
        command_of(command)

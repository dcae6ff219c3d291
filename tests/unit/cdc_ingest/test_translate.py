"""CDC events → RecordChanged: kinds, values, changed/nulled fields, origin, ids, positions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.cdc_ingest.translate import (
    GapOrder,
    OverflowOrder,
    Translated,
    origin_client,
    read_change,
    set_master_records,
    snapshot_event_id,
    stream_event_id,
    translate_event,
)
from services.cdc_ingest.typed import FieldInfo
from services.common.change import ChangeKind
from services.common.contract import from_proto
from services.common.values import Reference
from tests.unit.cdc_ingest.schemas import account_schema, encode, header

pytestmark = pytest.mark.unit

REPLAY = (1234).to_bytes(8, "big")
TYPES = {
    name: FieldInfo(name, sf_type)
    for name, sf_type in [
        ("Name", "string"),
        ("BillingStreet", "string"),
        ("BillingCity", "string"),
        ("BillingState", "string"),
        ("BillingPostalCode", "string"),
        ("BillingCountry", "string"),
        ("BillingAddress", "address"),
        ("Phone", "phone"),
        ("AnnualRevenue", "currency"),
        ("NumberOfEmployees", "int"),
        ("ParentId", "reference"),
        ("LastModifiedDate", "datetime"),
        ("Founded__c", "date"),
        ("Industries__c", "multipicklist"),
        ("IsActive__c", "boolean"),
    ]
}


def translate(record: dict[str, Any]) -> Translated:
    schema = account_schema()
    # Through the Avro bytes, as on the wire.
    decoded = schema.decode(encode(record))
    return translate_event(
        tenant_id="acme",
        channel="/data/ChangeEvents",
        replay_id=REPLAY,
        schema=schema,
        record=decoded,
        field_types=TYPES,
    )


def test_create_carries_every_field_typed_with_compounds_flattened() -> None:
    result = translate(
        {
            "ChangeEventHeader": header(changeType="CREATE"),
            "Name": "Acme",
            "BillingAddress": {
                "Street": "1 Main St",
                "City": "Springfield",
                "State": None,
                "PostalCode": None,
                "Country": "US",
            },
            "AnnualRevenue": 1500000.5,
            "NumberOfEmployees": 12,
            "ParentId": "001000000000009AAA",
            "LastModifiedDate": 1_714_564_800_123,
            "Founded__c": 19_844,
            "Industries__c": "Software;Services",
            "IsActive__c": True,
        }
    )
    (message,) = result.changes
    change = from_proto(message)
    assert change.kind is ChangeKind.CREATE
    assert change.fields["Name"] == "Acme"
    assert change.fields["BillingCity"] == "Springfield"
    assert change.fields["BillingStreet"] == "1 Main St"
    assert change.fields["BillingState"] is None
    assert "BillingAddress" not in change.fields
    assert change.fields["AnnualRevenue"] == Decimal("1500000.5")
    assert change.fields["NumberOfEmployees"] == 12
    assert change.fields["ParentId"] == Reference("001000000000009AAA")
    assert message.fields["ParentId"].WhichOneof("kind") == "reference_value"
    assert change.fields["LastModifiedDate"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert str(change.fields["Founded__c"]) == "2024-05-01"
    assert change.fields["Industries__c"] == ("Software", "Services")
    assert change.fields["IsActive__c"] is True
    assert change.changed == frozenset()


@pytest.mark.parametrize(
    ("changed", "nulled", "values", "fields", "changed_names", "nulled_names"),
    [
        (
            ["0x88"],
            [],
            {"Phone": "555", "LastModifiedDate": 1_714_564_800_123},
            {"Phone": "555", "LastModifiedDate": datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)},
            {"Phone", "LastModifiedDate"},
            set(),
        ),
        (
            # City changed, State nulled: both spellings of the component are named.
            ["0x80", "2-0x06"],
            ["0x00", "2-0x04"],
            {"BillingAddress": {"City": "Shelbyville"}, "LastModifiedDate": 1},
            {
                "BillingCity": "Shelbyville",
                "BillingState": None,
                "LastModifiedDate": datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
            },
            {"LastModifiedDate", "BillingAddress.City", "BillingCity", "BillingAddress.State", "BillingState"},
            {"BillingAddress.State", "BillingState"},
        ),
        (
            # Phone and the whole billing address nulled.
            ["0x8C"],
            ["0x0C"],
            {"LastModifiedDate": 0},
            {
                "Phone": None,
                "BillingStreet": None,
                "BillingCity": None,
                "BillingState": None,
                "BillingPostalCode": None,
                "BillingCountry": None,
                "LastModifiedDate": datetime(1970, 1, 1, tzinfo=UTC),
            },
            {"Phone", "LastModifiedDate", "BillingAddress"}
            | {f"BillingAddress.{p}" for p in ["Street", "City", "State", "PostalCode", "Country"]}
            | {f"Billing{p}" for p in ["Street", "City", "State", "PostalCode", "Country"]},
            {"Phone", "BillingAddress"}
            | {f"BillingAddress.{p}" for p in ["Street", "City", "State", "PostalCode", "Country"]}
            | {f"Billing{p}" for p in ["Street", "City", "State", "PostalCode", "Country"]},
        ),
    ],
)
def test_update_carries_only_changed_and_nulled_fields(
    changed: list[str],
    nulled: list[str],
    values: dict[str, Any],
    fields: dict[str, Any],
    changed_names: set[str],
    nulled_names: set[str],
) -> None:
    result = translate({"ChangeEventHeader": header(changedFields=changed, nulledFields=nulled)} | values)
    (message,) = result.changes
    change = from_proto(message)
    assert change.kind is ChangeKind.UPDATE
    assert dict(change.fields) == fields
    assert change.changed == changed_names
    assert change.nulled == nulled_names


@pytest.mark.parametrize(("change_type", "kind"), [("DELETE", ChangeKind.DELETE), ("UNDELETE", ChangeKind.UNDELETE)])
def test_delete_and_undelete(change_type: str, kind: ChangeKind) -> None:
    record: dict[str, Any] = {"ChangeEventHeader": header(changeType=change_type)}
    if change_type == "UNDELETE":
        record["Name"] = "Back"
    (message,) = translate(record).changes
    change = from_proto(message)
    assert change.kind is kind
    if kind is ChangeKind.DELETE:
        assert not change.fields
    else:
        assert change.fields["Name"] == "Back"


def test_header_facts_travel_with_the_change() -> None:
    (message,) = translate({"ChangeEventHeader": header(changedFields=["0x08"]), "Phone": "1"}).changes
    assert message.tenant_id == "acme"
    assert message.origin_side == pb.SIDE_CRM
    assert message.object_type == "Account"
    assert message.record_id == "001000000000001AAA"
    assert message.origin_client == "crm-ui"
    assert message.transaction_key == "tx-1"
    assert message.sequence == 3
    assert message.origin_commit_time.ToMilliseconds() == 1_714_564_800_123
    assert message.source_position.replay_id == REPLAY
    assert message.source_position.channel == "/data/ChangeEvents"
    assert message.event_id == stream_event_id("acme", "Account", REPLAY, "001000000000001AAA")


def test_a_merged_event_becomes_one_change_per_record() -> None:
    ids = ["001000000000001AAA", "001000000000002AAA", "001000000000003AAA"]
    result = translate({"ChangeEventHeader": header(recordIds=ids, changedFields=["0x08"]), "Phone": "9"})
    assert [m.record_id for m in result.changes] == ids
    assert len({m.event_id for m in result.changes}) == 3
    assert {m.fields["Phone"].string_value for m in result.changes} == {"9"}


def test_event_ids_are_deterministic_and_distinct() -> None:
    first = translate({"ChangeEventHeader": header(changedFields=["0x08"]), "Phone": "9"})
    again = translate({"ChangeEventHeader": header(changedFields=["0x08"]), "Phone": "9"})
    assert first.changes[0].event_id == again.changes[0].event_id
    other_replay = stream_event_id("acme", "Account", (1235).to_bytes(8, "big"), "001000000000001AAA")
    assert other_replay != first.changes[0].event_id
    assert stream_event_id("globex", "Account", REPLAY, "001000000000001AAA") != first.changes[0].event_id


@pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
def test_gap_events_become_refetch_orders(change_type: str) -> None:
    ids = ["001000000000001AAA", "001000000000002AAA"]
    result = translate({"ChangeEventHeader": header(changeType=change_type, recordIds=ids, sequenceNumber=1)})
    assert result.changes == ()
    assert result.order == GapOrder("Account", tuple(ids), change_type, result.commit_time, REPLAY)


@pytest.mark.parametrize(
    ("record_ids", "change_type", "reason"),
    [([], "GAP_OVERFLOW", "overflow"), (["001*"], "UPDATE", "wildcard")],
)
def test_overflow_and_wildcards_become_window_reads(record_ids: list[str], change_type: str, reason: str) -> None:
    result = translate({"ChangeEventHeader": header(changeType=change_type, recordIds=record_ids)})
    assert result.changes == ()
    assert isinstance(result.order, OverflowOrder)
    assert result.order.reason == reason
    assert result.order.commit_time == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("origin", "client"),
    [
        ("com/salesforce/api/rest/62.0;client=duplex-acme", "duplex-acme"),
        ("com/salesforce/api/soap/58.0;client=SfdcInternalAPI/", "SfdcInternalAPI/"),
        ("com/salesforce/api/rest/62.0", ""),
        ("", ""),
        ("com/salesforce/api/rest/62.0;defaultNamespace=ns;client=x", "x"),
        ("com/salesforce/api/rest/62.0; Client = spaced ", "spaced"),
    ],
)
def test_origin_client_comes_from_change_origin(origin: str, client: str) -> None:
    assert origin_client(origin) == client


def test_re_read_records_are_snapshots_keyed_by_their_state() -> None:
    stamp = datetime(2024, 5, 1, 12, tzinfo=UTC)
    message = read_change(
        tenant_id="acme",
        entity="Account",
        record_id="001000000000001AAA",
        values={"Name": "Acme"},
        modstamp=stamp,
        kind=ChangeKind.SNAPSHOT,
        cursor="c",
        channel="poll:Account",
    )
    assert message.kind == pb.CHANGE_KIND_SNAPSHOT
    assert message.origin_commit_time.ToDatetime(tzinfo=UTC) == stamp
    assert message.source_position.cursor == "c"
    assert message.event_id == snapshot_event_id("acme", "Account", "001000000000001AAA", stamp, ChangeKind.SNAPSHOT)
    later = snapshot_event_id("acme", "Account", "001000000000001AAA", stamp.replace(second=1), ChangeKind.SNAPSHOT)
    assert later != message.event_id


@pytest.mark.parametrize(
    ("missing_since", "dated"),
    [
        (None, 12),  # a poll or backfill: the state as of its last modification
        (11, 11),  # re-read for missing events after 11:00: later edits' own events are still to come
        (13, 12),  # missing only after the record's last modification: its stamp is already exact
    ],
)
def test_a_re_read_after_missing_events_is_dated_no_later_than_them(missing_since: int | None, dated: int) -> None:
    stamp = datetime(2024, 5, 1, 12, tzinfo=UTC)
    message = read_change(
        tenant_id="acme",
        entity="Account",
        record_id="001000000000001AAA",
        values={"Name": "Acme"},
        modstamp=stamp,
        kind=ChangeKind.SNAPSHOT,
        cursor="c",
        channel="gap:Account",
        missing_since=stamp.replace(hour=missing_since) if missing_since else None,
    )
    assert message.origin_commit_time.ToDatetime(tzinfo=UTC) == stamp.replace(hour=dated)
    # The same state read again is the same event, whatever the date given to it.
    assert message.event_id == snapshot_event_id("acme", "Account", "001000000000001AAA", stamp, ChangeKind.SNAPSHOT)


@pytest.mark.parametrize(
    ("kind", "values", "fields"),
    [
        # A merge loser re-read from the recycle bin: its winner travels with the deletion.
        (
            ChangeKind.DELETE,
            {"Name": "Loser", "MasterRecordId": Reference("001W")},
            {"MasterRecordId": Reference("001W")},
        ),
        # An ordinary deletion carries nothing, not even a null MasterRecordId.
        (ChangeKind.DELETE, {"Name": "Gone", "MasterRecordId": None}, {}),
        (ChangeKind.DELETE, {"Name": "Gone"}, {}),
        (ChangeKind.SNAPSHOT, {"Name": "Kept", "MasterRecordId": None}, {"Name": "Kept", "MasterRecordId": None}),
    ],
)
def test_a_re_read_deletion_carries_only_the_merge_winner(
    kind: ChangeKind, values: dict[str, Any], fields: dict[str, Any]
) -> None:
    message = read_change(
        tenant_id="acme",
        entity="Account",
        record_id="001L",
        values=values,
        modstamp=datetime(2024, 5, 1, 12, tzinfo=UTC),
        kind=kind,
        cursor="c",
        channel="catch_up:Account",
    )
    assert from_proto(message).fields == fields


def _streamed(change_type: str, record_id: str) -> pb.RecordChanged:
    (message,) = translate({"ChangeEventHeader": header(changeType=change_type, recordIds=[record_id])}).changes
    return message


@pytest.mark.parametrize(
    ("change_type", "record_id", "masters", "expected"),
    [
        ("DELETE", "001L", {("Account", "001L"): "001W"}, {"MasterRecordId": Reference("001W")}),
        ("DELETE", "001X", {("Account", "001L"): "001W"}, {}),  # an ordinary deletion
        ("DELETE", "001L", {("Contact", "001L"): "003W"}, {}),  # keyed by object too
        ("UNDELETE", "001L", {("Account", "001L"): "001W"}, None),  # only deletions are given one
    ],
)
def test_set_master_records_marks_only_merge_losers_deletions(
    change_type: str, record_id: str, masters: dict[tuple[str, str], str], expected: dict[str, Any] | None
) -> None:
    message = _streamed(change_type, record_id)
    before = from_proto(message).fields
    count = set_master_records([message], masters)
    after = from_proto(message).fields
    if expected is None:
        assert (count, after) == (0, before)
    else:
        assert (count, after) == (len(expected), expected)

"""Which failures are one event's own (rejected, the stream moves on): any failure to read its schema
text, its payload bytes or the decoded event; and what the rejection says (never the payload)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from services.cdc_ingest.event_schema import parse_schema
from services.cdc_ingest.rejection import MAX_ERROR_CHARS, UndecodableError, reading, too_large, undecodable
from services.cdc_ingest.translate import event_origin, translate_event
from tests.unit.cdc_ingest.schemas import ACCOUNT_SCHEMA, account_schema, encode, header

pytestmark = pytest.mark.unit

REPLAY = (77).to_bytes(8, "big")
GOOD = encode({"ChangeEventHeader": header(), "Name": None})
# Every object field is a ["null", T] union; an all-null event ends with one 0 (branch "null") per field.
BODY_FIELDS = len(ACCOUNT_SCHEMA["fields"]) - 1


def written_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def decode_error(payload: bytes) -> UndecodableError:
    with pytest.raises(UndecodableError) as raised:
        account_schema().decode(payload)
    assert raised.value.stage == "payload"
    return raised.value


def test_a_good_payload_decodes() -> None:
    assert account_schema().decode(GOOD)["ChangeEventHeader"]["entityName"] == "Account"


def test_a_union_branch_out_of_range_is_undecodable_not_an_index_error_that_loops_the_stream() -> None:
    # The first object field (Name) names branch 5 of its two-branch union.
    bad_branch = GOOD[:-BODY_FIELDS] + b"\x0a" + GOOD[-BODY_FIELDS + 1 :]
    assert decode_error(bad_branch).error_type == "IndexError"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(GOOD[: len(GOOD) // 2], id="truncated"),
        pytest.param(b"\xff" * 64, id="garbage"),
        pytest.param(bytes(range(256)), id="every-byte"),
        pytest.param(GOOD + b"\x00\x01", id="trailing-bytes"),
        pytest.param(
            written_with(
                {
                    "type": "record",
                    "name": "Other",
                    "fields": [{"name": "n", "type": "long"}, {"name": "s", "type": "string"}],
                },
                {"n": 123456789, "s": "not an account"},
            ),
            id="another-schema",
        ),
    ],
)
def test_bytes_that_are_not_this_schemas_record_are_undecodable(payload: bytes) -> None:
    error = decode_error(payload)
    assert error.error_type
    assert len(error.error) <= MAX_ERROR_CHARS


@pytest.mark.parametrize(
    "schema_json",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param(json.dumps(["null", "string"]), id="not-a-record"),
        pytest.param(
            json.dumps({"type": "record", "name": "R", "fields": [{"name": "x", "type": "long"}]}), id="no-header"
        ),
        pytest.param(
            json.dumps(ACCOUNT_SCHEMA | {"fields": [*ACCOUNT_SCHEMA["fields"], {"name": "X", "type": "NoSuchType"}]}),
            id="unknown-type",
        ),
        pytest.param(
            json.dumps({"type": "record", "name": "R", "fields": [{"type": "long"}]}), id="field-without-name"
        ),
    ],
)
def test_a_schema_text_that_cannot_be_parsed_is_undecodable(schema_json: str) -> None:
    with pytest.raises(UndecodableError) as raised:
        parse_schema("bad-schema", schema_json)
    assert raised.value.stage == "schema"


@pytest.mark.parametrize(
    ("record", "error_type"),
    [
        pytest.param({"ChangeEventHeader": header(changeType="RENAME")}, "ValueError", id="unknown-change-type"),
        pytest.param({"ChangeEventHeader": header(changedFields=["0x8000"])}, "BitmapError", id="bitmap-beyond-schema"),
        pytest.param({"ChangeEventHeader": header(changedFields=["zz"])}, "BitmapError", id="bitmap-not-hex"),
        pytest.param(
            {"ChangeEventHeader": header(commitTimestamp=10**18)}, "OverflowError", id="commit-time-out-of-range"
        ),
        pytest.param({}, "KeyError", id="no-header"),
    ],
)
def test_a_decoded_event_that_makes_no_sense_is_undecodable(record: dict[str, Any], error_type: str) -> None:
    with pytest.raises(UndecodableError) as raised:
        translate_event(
            tenant_id="acme",
            channel="/data/ChangeEvents",
            replay_id=REPLAY,
            schema=account_schema(),
            record=record,
            field_types={},
        )
    assert (raised.value.stage, raised.value.error_type) == ("event", error_type)


def test_an_event_of_an_object_not_synced_still_needs_its_commit_time() -> None:
    with pytest.raises(UndecodableError) as raised:
        event_origin({"ChangeEventHeader": {"entityName": "Opportunity"}})
    assert raised.value.error_type == "KeyError"


def test_reading_keeps_the_first_stage_and_shortens_the_message() -> None:
    with pytest.raises(UndecodableError) as raised, reading("event"), reading("payload"):
        raise ValueError("x" * 10_000)
    assert raised.value.stage == "payload"
    assert raised.value.error == "x" * MAX_ERROR_CHARS


def test_an_undecodable_rejection_names_the_event_and_the_error_but_never_the_payload() -> None:
    secret = "Jane Doe, 555-0100"
    payload = encode({"ChangeEventHeader": header(), "Name": secret})
    with pytest.raises(UndecodableError) as raised:
        account_schema().decode(payload[:-3])
    rejection = undecodable(raised.value, channel="/data/ChangeEvents", replay_id=REPLAY, schema_id="acct-schema-1")
    assert (rejection.event, rejection.code, rejection.reason) == (
        "cdc.undecodable",
        "UNDECODABLE_EVENT",
        "undecodable",
    )
    assert rejection.detail == {
        "channel": "/data/ChangeEvents",
        "replay_id": REPLAY.hex(),
        "schema_id": "acct-schema-1",
        "stage": "payload",
        "error_type": raised.value.error_type,
        "error": raised.value.error,
    }
    assert rejection.origin == {
        "channel": "/data/ChangeEvents",
        "replay-id": REPLAY.hex(),
        "schema-id": "acct-schema-1",
    }
    assert secret not in rejection.message
    assert all(secret not in str(value) for value in rejection.detail.values())


def test_a_too_large_rejection_names_tenant_object_record_and_size_against_the_limit() -> None:
    rejection = too_large(
        object_type="Account",
        record_id="001000000000001AAA",
        size=2_000_000,
        limit=1_048_576,
        position={"channel": "/data/ChangeEvents", "replay-id": REPLAY.hex()},
    )
    assert (rejection.event, rejection.code, rejection.record_id) == (
        "cdc.record_too_large",
        "RECORD_TOO_LARGE",
        "001000000000001AAA",
    )
    assert "2000000 bytes" in rejection.message
    assert "1048576 bytes" in rejection.message
    assert rejection.detail["size"] == 2_000_000
    assert rejection.origin["limit"] == "1048576"

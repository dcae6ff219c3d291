"""Protobuf on the wire, and the record keys."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from duplex.change.v1 import record_changed_pb2, value_pb2
from duplex.writer.v1 import write_settled_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.common.codec import (
    CONTENT_TYPE,
    MESSAGE_TYPE_HEADER,
    ProtobufCodec,
    decode_event,
    encode_event,
    event_headers,
    link_key,
    partition_of,
    record_key,
    tenant_of_key,
)
from services.common.errors import InvalidEvent

pytestmark = pytest.mark.unit

RecordChanged = record_changed_pb2.RecordChanged


def a_change() -> record_changed_pb2.RecordChanged:
    return RecordChanged(
        event_id="evt-1",
        tenant_id="acme",
        origin_side=record_changed_pb2.SIDE_CRM,
        object_type="Account",
        record_id="001000000000001AAA",
        kind=record_changed_pb2.CHANGE_KIND_UPDATE,
        fields={
            "Name": value_pb2.FieldValue(string_value="Acme Ltd"),
            "AnnualRevenue": value_pb2.FieldValue(decimal_value="1200000.50"),
            "Fax": value_pb2.FieldValue(null_value=True),
        },
        changed_fields=["Name", "AnnualRevenue", "Fax"],
        nulled_fields=["Fax"],
        origin_commit_time=Timestamp(seconds=1_700_000_000, nanos=5),
    )


def test_round_trip_keeps_every_field() -> None:
    event = a_change()
    assert decode_event(RecordChanged, encode_event(event)) == event


def test_encoding_is_deterministic() -> None:
    assert encode_event(a_change()) == encode_event(a_change())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "empty payload", id="empty"),
        pytest.param(b"\xff\xff\xff\xff", "not a valid duplex.change.v1.RecordChanged", id="garbage"),
        pytest.param(b'{"event_id": "evt-1"}', "not a valid", id="json"),
        pytest.param(
            RecordChanged(object_type="Account").SerializeToString(), "without event_id, tenant_id", id="no id"
        ),
        pytest.param(RecordChanged(event_id="e").SerializeToString(), "without tenant_id", id="no tenant"),
    ],
)
def test_what_cannot_be_an_event_is_invalid_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason) as caught:
        decode_event(RecordChanged, data)
    assert reason in caught.value.reason


def test_other_messages_need_their_own_identity() -> None:
    settled = write_settled_pb2.WriteSettled(tenant_id="acme")
    with pytest.raises(InvalidEvent, match="without command_id"):
        decode_event(write_settled_pb2.WriteSettled, settled.SerializeToString())


def test_a_declared_type_of_another_message_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidEvent, match=r"expected duplex\.change\.v1\.RecordChanged, the producer declared x\.Y"):
        decode_event(RecordChanged, encode_event(a_change()), declared_type="x.Y")
    assert decode_event(RecordChanged, encode_event(a_change()), declared_type="duplex.change.v1.RecordChanged")


def test_unknown_fields_from_a_newer_producer_are_tolerated() -> None:
    # Field 99, wire type 2 (tag varint 0x9a 0x06), 3 bytes: what a producer with a new field sends.
    newer = encode_event(a_change()) + bytes([0x9A, 0x06, 3]) + b"new"
    decoded = decode_event(RecordChanged, newer)
    assert decoded.event_id == "evt-1"
    assert encode_event(decoded).endswith(b"new")  # kept, so a re-publish does not lose them


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_an_identified_event_or_raise_invalid_event(data: bytes) -> None:
    reason = ""
    try:
        event = decode_event(RecordChanged, data)
    except InvalidEvent as error:
        reason = error.reason
    else:
        assert event.event_id
        assert event.tenant_id
        return
    assert reason


def test_event_headers() -> None:
    assert event_headers(a_change()) == {
        "content-type": CONTENT_TYPE,
        MESSAGE_TYPE_HEADER: "duplex.change.v1.RecordChanged",
    }


async def test_codec_encodes_protobuf_and_passes_raw_bytes_through() -> None:
    codec: ProtobufCodec[RecordChanged] = ProtobufCodec()
    assert await codec.encode(a_change()) == (encode_event(a_change()), CONTENT_TYPE)
    assert await codec.encode(b"\x00raw") == (b"\x00raw", None)


def test_keys() -> None:
    assert record_key("acme", "Account", "001xx") == b"acme/Account/001xx"
    assert link_key("acme", "lnk-7") == b"acme/lnk-7"
    # The last component may hold the separator: the key still splits unambiguously.
    assert record_key("acme", "files", "a/b") == b"acme/files/a/b"


@pytest.mark.parametrize(
    "parts",
    [("", "Account", "1"), ("acme", "", "1"), ("acme", "Account", ""), ("ac/me", "Account", "1"), ("acme", "A/B", "1")],
)
def test_keys_refuse_empty_or_ambiguous_components(parts: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="record key"):
        record_key(*parts)


@pytest.mark.parametrize(
    ("key", "tenant"),
    [(b"acme/Account/1", "acme"), (b"acme/lnk", "acme"), (b"acme", None), (b"/x", None), (None, None), (b"", None)],
)
def test_tenant_of_key(key: bytes | None, tenant: str | None) -> None:
    assert tenant_of_key(key) == tenant


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_a_key_goes_to_the_partition_kafkas_default_partitioner_picks(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_of(key, partitions) == DefaultPartitioner()(key, every, every)


def test_partition_of_matches_the_java_clients_murmur2_on_its_own_test_vectors() -> None:
    # Java's Utils.murmur2 of these keys (Kafka's own unit test), sign bit cleared (toPositive).
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, murmur2 in java.items():
        assert partition_of(key, 2**31 - 1) == (murmur2 & 0x7FFFFFFF) % (2**31 - 1), key

"""Pub/Sub API conformance: stubs generated from Salesforce's public proto against the real grpc.aio server.

The event log is fed with CommittedTransactions directly, as the record store would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import avro.io
import avro.schema
import fastavro
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.salesforce_emulator import cdc, schema
from services.salesforce_emulator.changes import CommittedTransaction, RecordChange
from services.salesforce_emulator.event_log import EventLog, replay_bytes, replay_int
from services.salesforce_emulator.pubsub import (
    ERROR_AUTH,
    ERROR_REPLAY_CORRUPTED,
    ERROR_TOPIC_NOT_FOUND,
    build_pubsub_server,
)

pytestmark = pytest.mark.conformance

ORG = "00D5g000004ABCDEAQ"
OTHER_ORG = "00D5g000009ZYXWEAQ"
TOKEN = "00D5g000004ABCD!session-token"
INSTANCE = "https://emulated.my.salesforce.com"
METADATA = (("accesstoken", TOKEN), ("instanceurl", INSTANCE), ("tenantid", ORG))
KEEPALIVE = 1.0
READ_TIMEOUT = 5.0

ORDER_EVENT = cdc.platform_event_def(
    "NewOrderConfirmation__e",
    (
        schema.FieldDef("OpptyRecordId__c", "string", custom=True),
        schema.FieldDef("EstimatedDeliveryDate__c", "datetime", custom=True),
        schema.FieldDef("Weight__c", "double", custom=True),
    ),
)
OBJECTS: Mapping[str, schema.ObjectDef] = {
    o.name: o for o in (schema.ACCOUNT, schema.CONTACT, schema.OPPORTUNITY, ORDER_EVENT)
}


def schema_for(org_id: str) -> Mapping[str, schema.ObjectDef]:
    return OBJECTS


def authenticate(access_token: str, instance_url: str, tenant_id: str) -> str:
    if access_token != TOKEN or tenant_id != ORG or instance_url != INSTANCE:
        raise PermissionError("invalid session")
    return ORG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Emulator:
    log: EventLog
    stub: pb_grpc.PubSubAsyncStub
    channel: grpc.aio.Channel
    target: str
    counter: list[int] = field(default_factory=lambda: [0])

    def commit(self, *changes: RecordChange, org_id: str = ORG) -> None:
        self.counter[0] += 1
        self.log.publish(
            CommittedTransaction(
                org_id=org_id,
                transaction_key=f"tx-{self.counter[0]}",
                commit_timestamp_ms=1_700_000_000_000 + self.counter[0],
                commit_number=self.counter[0],
                commit_user="0055g00000USERAAA",
                change_origin="com/salesforce/api/rest/62.0;client=duplex",
                changes=changes,
            )
        )

    def create_accounts(self, count: int, *, start: int = 0) -> list[str]:
        ids = [f"0015g{n:010d}AAA" for n in range(start, start + count)]
        for record_id in ids:
            self.commit(RecordChange("Account", "CREATE", (record_id,), {"Name": f"Acme {record_id}"}))
        return ids


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    log = EventLog(schema_for)
    port = free_port()
    server = build_pubsub_server(
        "127.0.0.1",
        port,
        tls=None,
        log=log,
        schema_for=schema_for,
        authenticate=authenticate,
        keepalive_seconds=KEEPALIVE,
    )
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Emulator(log, pb_grpc.PubSubStub(channel), channel, target)
    finally:
        await channel.close(None)
        await server.stop(None)
        log.close()


class Subscription:
    """A Subscribe call whose FetchRequests the test sends when it wants."""

    def __init__(self, stub: pb_grpc.PubSubAsyncStub, metadata: tuple[tuple[str, str], ...] = METADATA) -> None:
        self.requests: asyncio.Queue[pb.FetchRequest | None] = asyncio.Queue()
        self.call = stub.Subscribe(self._requests(), metadata=metadata)

    async def _requests(self) -> AsyncIterator[pb.FetchRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    def send(self, **fields: Any) -> None:
        self.requests.put_nowait(pb.FetchRequest(**fields))

    async def read(self, seconds: float = READ_TIMEOUT) -> pb.FetchResponse:
        response = await asyncio.wait_for(self.call.read(), seconds)
        assert isinstance(response, pb.FetchResponse), response
        return response

    async def read_events(self, count: int) -> tuple[list[pb.ConsumerEvent], list[pb.FetchResponse]]:
        """Responses until ``count`` events arrived (keepalives skipped but kept)."""
        events: list[pb.ConsumerEvent] = []
        responses: list[pb.FetchResponse] = []
        while len(events) < count:
            response = await self.read()
            responses.append(response)
            events.extend(response.events)
        return events, responses

    def cancel(self) -> None:
        self.call.cancel()


async def status_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:  # noqa: PT012 - the error comes from any read
        while isinstance(await asyncio.wait_for(call.read(), READ_TIMEOUT), Message):
            pass
    return info.value


def error_code(error: grpc.aio.AioRpcError) -> str | None:
    # grpc-stubs types entries as objects; at runtime aio metadata entries are (key, value) pairs.
    entries: Any = error.trailing_metadata() or ()
    found = dict(entries).get("error-code")
    return None if found is None else str(found)


def replay_of(event: pb.ConsumerEvent) -> int:
    replay = replay_int(event.replay_id)
    assert replay is not None
    return replay


def decode_both(schema_json: str, payload: bytes) -> dict[str, Any]:
    """Decode with the reference avro package and with fastavro; both must agree."""
    reader = avro.io.DatumReader(avro.schema.parse(schema_json))
    by_avro = reader.read(avro.io.BinaryDecoder(io.BytesIO(payload)))
    by_fastavro = fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(json.loads(schema_json)), None)
    assert by_avro == by_fastavro
    assert isinstance(by_avro, dict)
    return by_avro


async def test_get_topic_reports_org_and_current_schema(emulator: Emulator) -> None:
    info = await emulator.stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=METADATA)

    assert info.topic_name == "/data/AccountChangeEvent"
    assert info.tenant_guid == ORG
    assert (info.can_subscribe, info.can_publish) == (True, False)
    assert len(info.schema_id) == 22
    assert info.rpc_id
    schema_info = await emulator.stub.GetSchema(pb.SchemaRequest(schema_id=info.schema_id), metadata=METADATA)
    parsed = json.loads(schema_info.schema_json)
    assert (parsed["name"], parsed["namespace"]) == ("AccountChangeEvent", "com.sforce.eventbus")
    assert parsed["fields"][0]["name"] == "ChangeEventHeader"
    assert schema_info.schema_id == info.schema_id


async def test_custom_object_channel_and_platform_event_topic(emulator: Emulator) -> None:
    info = await emulator.stub.GetTopic(pb.TopicRequest(topic_name="/event/NewOrderConfirmation__e"), metadata=METADATA)
    assert (info.can_publish, info.can_subscribe) == (True, True)
    assert len(info.schema_id) == 22
    everything = await emulator.stub.GetTopic(pb.TopicRequest(topic_name="/data/ChangeEvents"), metadata=METADATA)
    assert everything.can_subscribe
    assert not everything.can_publish


async def test_get_schema_serves_a_schema_before_any_event(emulator: Emulator) -> None:
    schema_id = cdc.change_event_schema(schema.CONTACT).schema_id

    info = await emulator.stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=METADATA)

    assert json.loads(info.schema_json)["name"] == "ContactChangeEvent"


async def test_get_schema_of_an_unknown_id_is_not_found(emulator: Emulator) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await emulator.stub.GetSchema(pb.SchemaRequest(schema_id="AAAAAAAAAAAAAAAAAAAAAA"), metadata=METADATA)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_subscribe_earliest_delivers_every_event_in_order_decodable(emulator: Emulator) -> None:
    ids = emulator.create_accounts(5)
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=5)

    events, responses = await sub.read_events(5)
    sub.cancel()

    assert responses[-1].pending_num_requested == 0
    assert responses[-1].latest_replay_id == events[-1].replay_id
    assert all(len(e.replay_id) == 8 for e in events)
    replays = [replay_of(e) for e in events]
    assert replays == sorted(replays)
    schemas: dict[str, str] = {}
    for event, record_id in zip(events, ids, strict=True):
        if event.event.schema_id not in schemas:
            info = await emulator.stub.GetSchema(pb.SchemaRequest(schema_id=event.event.schema_id), metadata=METADATA)
            schemas[event.event.schema_id] = info.schema_json
        decoded = decode_both(schemas[event.event.schema_id], event.event.payload)
        header = decoded["ChangeEventHeader"]
        assert header["recordIds"] == [record_id]
        assert header["changeType"] == "CREATE"
        assert header["changedFields"] == []
        assert header["changeOrigin"] == "com/salesforce/api/rest/62.0;client=duplex"
        assert decoded["Name"] == f"Acme {record_id}"
        assert event.event.id


async def test_request_three_gives_exactly_three_then_pending_zero(emulator: Emulator) -> None:
    emulator.create_accounts(10)
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=3)

    events, responses = await sub.read_events(3)
    keepalive = await sub.read(KEEPALIVE * 3)

    assert len(events) == 3
    assert responses[-1].pending_num_requested == 0
    assert [r.pending_num_requested for r in responses] == sorted(
        (r.pending_num_requested for r in responses), reverse=True
    )
    # Nothing more until asked: the next response is a keepalive that does not skip the undelivered events.
    assert list(keepalive.events) == []
    assert keepalive.pending_num_requested == 0
    assert keepalive.latest_replay_id == events[-1].replay_id

    sub.send(num_requested=2)
    more, more_responses = await sub.read_events(2)
    sub.cancel()
    assert len(more) == 2
    assert more_responses[-1].pending_num_requested == 0
    assert replay_of(more[0]) == replay_of(events[-1]) + 1


async def test_requests_above_one_hundred_are_capped(emulator: Emulator) -> None:
    emulator.create_accounts(150)
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=150)

    events, responses = await sub.read_events(100)
    keepalive = await sub.read(KEEPALIVE * 3)
    sub.cancel()

    assert len(events) == 100
    assert responses[0].pending_num_requested == 100 - len(responses[0].events)
    assert responses[-1].pending_num_requested == 0
    assert list(keepalive.events) == []


async def test_later_requests_add_to_pending_up_to_the_cap(emulator: Emulator) -> None:
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.LATEST, num_requested=60)
    sub.send(num_requested=60)
    first = await sub.read(KEEPALIVE * 3)
    assert list(first.events) == []
    assert first.pending_num_requested == 100

    emulator.create_accounts(130)
    events, responses = await sub.read_events(100)
    keepalive = await sub.read(KEEPALIVE * 3)
    sub.cancel()

    assert len(events) == 100
    assert responses[-1].pending_num_requested == 0
    assert list(keepalive.events) == []


async def test_latest_starts_at_the_tip(emulator: Emulator) -> None:
    emulator.create_accounts(2)
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.LATEST, num_requested=5)
    keepalive = await sub.read(KEEPALIVE * 3)
    assert list(keepalive.events) == []
    assert replay_int(keepalive.latest_replay_id) == 2
    assert keepalive.pending_num_requested == 5

    (new_id,) = emulator.create_accounts(1, start=100)
    events, _ = await sub.read_events(1)
    sub.cancel()

    assert replay_int(events[0].replay_id) == 3
    decoded = cdc.change_event_schema(schema.ACCOUNT).decode(events[0].event.payload)
    assert decoded["ChangeEventHeader"]["recordIds"] == [new_id]


async def test_custom_resumes_after_the_given_replay_id(emulator: Emulator) -> None:
    emulator.create_accounts(5)
    sub = Subscription(emulator.stub)
    sub.send(
        topic_name="/data/AccountChangeEvent", replay_preset=pb.CUSTOM, replay_id=replay_bytes(2), num_requested=10
    )

    events, _ = await sub.read_events(3)
    sub.cancel()

    assert [replay_of(e) for e in events] == [3, 4, 5]


async def test_official_client_pattern_repeats_first_request_fields(emulator: Emulator) -> None:
    # The Python example sends topic, preset and replay id on every request, one event at a time.
    emulator.create_accounts(3)
    sub = Subscription(emulator.stub)
    request = {"topic_name": "/data/AccountChangeEvent", "replay_preset": pb.EARLIEST, "num_requested": 1}
    delivered = []
    for _ in range(3):
        sub.send(**request)
        events, responses = await sub.read_events(1)
        assert responses[-1].pending_num_requested == 0
        delivered.extend(events)
    sub.cancel()

    assert [replay_of(e) for e in delivered] == [1, 2, 3]


async def test_keepalive_reports_latest_replay_id_of_the_org(emulator: Emulator) -> None:
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.LATEST, num_requested=1)
    started = time.monotonic()
    first = await sub.read(KEEPALIVE * 3)
    # Events on another channel move the safe resume point forward for this subscriber too.
    emulator.commit(RecordChange("Contact", "CREATE", ("0035g0000000001AAA",), {"LastName": "Lee"}))
    second = await sub.read(KEEPALIVE * 3)
    sub.cancel()

    assert time.monotonic() - started < KEEPALIVE * 4
    assert list(first.events) == [] == list(second.events)
    assert replay_int(first.latest_replay_id) == 0
    assert replay_int(second.latest_replay_id) == 1
    assert second.rpc_id == first.rpc_id != ""


async def test_all_change_events_channel_carries_every_object(emulator: Emulator) -> None:
    emulator.create_accounts(1)
    emulator.commit(RecordChange("Contact", "CREATE", ("0035g0000000001AAA",), {"LastName": "Lee", "FirstName": "Ann"}))
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/ChangeEvents", replay_preset=pb.EARLIEST, num_requested=10)

    events, _ = await sub.read_events(2)
    sub.cancel()

    names = []
    for event in events:
        info = await emulator.stub.GetSchema(pb.SchemaRequest(schema_id=event.event.schema_id), metadata=METADATA)
        names.append(json.loads(info.schema_json)["name"])
        decoded = decode_both(info.schema_json, event.event.payload)
        if names[-1] == "ContactChangeEvent":
            assert decoded["Name"] == {"Salutation": None, "FirstName": "Ann", "LastName": "Lee"}
    assert names == ["AccountChangeEvent", "ContactChangeEvent"]


async def test_expired_replay_id_fails_with_corrupted_code(emulator: Emulator) -> None:
    emulator.create_accounts(5)
    assert emulator.log.purge_before(ORG, int(time.time() * 1000) + 1000) == 5
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.CUSTOM, replay_id=replay_bytes(2), num_requested=1)

    error = await status_of(sub.call)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == ERROR_REPLAY_CORRUPTED
    assert "rpcId: " in (error.details() or "")


@pytest.mark.parametrize("replay_id", [replay_bytes(10_000), b"\x01\x02"])
async def test_unknown_or_malformed_replay_id_fails_with_corrupted_code(emulator: Emulator, replay_id: bytes) -> None:
    emulator.create_accounts(1)
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.CUSTOM, replay_id=replay_id, num_requested=1)

    error = await status_of(sub.call)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(error) == ERROR_REPLAY_CORRUPTED


async def test_events_past_retention_expire() -> None:
    now = [1_000_000.0]
    log = EventLog(schema_for, retention_seconds=3600, clock=lambda: now[0])
    port = free_port()
    server = build_pubsub_server(
        "127.0.0.1", port, tls=None, log=log, schema_for=schema_for, authenticate=authenticate, keepalive_seconds=1
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            emulator = Emulator(log, pb_grpc.PubSubStub(channel), channel, "")
            emulator.create_accounts(2)
            now[0] += 3601
            emulator.create_accounts(1, start=50)
            sub = Subscription(emulator.stub)
            sub.send(
                topic_name="/data/AccountChangeEvent",
                replay_preset=pb.CUSTOM,
                replay_id=replay_bytes(1),
                num_requested=1,
            )
            error = await status_of(sub.call)
            earliest = Subscription(emulator.stub)
            earliest.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=5)
            events, _ = await earliest.read_events(1)
            earliest.cancel()
    finally:
        await server.stop(None)

    assert error_code(error) == ERROR_REPLAY_CORRUPTED
    assert [replay_of(e) for e in events] == [3]


async def test_changing_the_topic_mid_stream_is_invalid(emulator: Emulator) -> None:
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", num_requested=1)
    sub.send(topic_name="/data/ContactChangeEvent", num_requested=1)

    error = await status_of(sub.call)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rpcId: " in (error.details() or "")


async def test_unknown_topic_is_not_found(emulator: Emulator) -> None:
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/NoSuchThingChangeEvent", num_requested=1)

    error = await status_of(sub.call)

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_code(error) == ERROR_TOPIC_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await emulator.stub.GetTopic(pb.TopicRequest(topic_name="/event/Nope__e"), metadata=METADATA)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "metadata",
    [
        (("accesstoken", "expired"), ("instanceurl", INSTANCE), ("tenantid", ORG)),
        (("accesstoken", TOKEN), ("instanceurl", INSTANCE), ("tenantid", OTHER_ORG)),
        (),
    ],
)
async def test_authentication_failure(emulator: Emulator, metadata: tuple[tuple[str, str], ...]) -> None:
    # Refused on its metadata, before any request is read: sending one would race the refusal, and
    # a request written to a stream the server already closed fails the call as INTERNAL instead.
    sub = Subscription(emulator.stub, metadata)

    error = await status_of(sub.call)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await emulator.stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=metadata)

    for failure in (error, unary.value):
        assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_code(failure) == ERROR_AUTH
        assert "rpcId: " in (failure.details() or "")


async def test_publish_platform_event_and_read_it_back(emulator: Emulator) -> None:
    topic = "/event/NewOrderConfirmation__e"
    info = await emulator.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=METADATA)
    schema_json = (
        await emulator.stub.GetSchema(pb.SchemaRequest(schema_id=info.schema_id), metadata=METADATA)
    ).schema_json
    # Encoded as InventoryApp.py does it: the reference avro writer, CreatedDate in seconds.
    record = {
        "CreatedDate": int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp()),
        "CreatedById": "0055g00000USERAAA",
        "OpptyRecordId__c": "0065g0000000001AAA",
        "EstimatedDeliveryDate__c": 1_714_600_000,
        "Weight__c": 58.2,
    }
    buffer = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(schema_json)).write(record, avro.io.BinaryEncoder(buffer))
    event = pb.ProducerEvent(schema_id=info.schema_id, payload=buffer.getvalue())

    response = await emulator.stub.Publish(pb.PublishRequest(topic_name=topic, events=[event]), metadata=METADATA)

    assert response.schema_id == info.schema_id
    (result,) = response.results
    assert result.replay_id
    assert not result.HasField("error")
    assert result.correlation_key

    sub = Subscription(emulator.stub)
    sub.send(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=1)
    events, _ = await sub.read_events(1)
    sub.cancel()
    assert events[0].replay_id == result.replay_id
    assert events[0].event.id == result.correlation_key
    assert decode_both(schema_json, events[0].event.payload) == record


async def test_publish_with_unknown_schema_reports_a_per_event_error(emulator: Emulator) -> None:
    topic = "/event/NewOrderConfirmation__e"
    good = (await emulator.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=METADATA)).schema_id
    events = [
        pb.ProducerEvent(id="bad", schema_id="AAAAAAAAAAAAAAAAAAAAAA", payload=b"\x00"),
        pb.ProducerEvent(id="good", schema_id=good, payload=b"\x00"),
    ]

    response = await emulator.stub.Publish(pb.PublishRequest(topic_name=topic, events=events), metadata=METADATA)

    bad_result, good_result = response.results
    assert (bad_result.correlation_key, bad_result.error.code, bad_result.replay_id) == ("bad", pb.PUBLISH, b"")
    assert (good_result.correlation_key, good_result.replay_id) == ("good", replay_bytes(1))


async def test_change_event_channels_are_subscribe_only(emulator: Emulator) -> None:
    request = pb.PublishRequest(topic_name="/data/AccountChangeEvent", events=[pb.ProducerEvent(payload=b"x")])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await emulator.stub.Publish(request, metadata=METADATA)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_publish_stream_answers_each_request_and_rejects_a_topic_change(emulator: Emulator) -> None:
    topic = "/event/NewOrderConfirmation__e"
    schema_id = (await emulator.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=METADATA)).schema_id
    event = pb.ProducerEvent(schema_id=schema_id, payload=b"\x00")

    async def requests() -> AsyncIterator[pb.PublishRequest]:
        yield pb.PublishRequest(topic_name=topic, events=[event, event])
        yield pb.PublishRequest(events=[event])

    responses = [r async for r in emulator.stub.PublishStream(requests(), metadata=METADATA)]
    assert [[replay_int(x.replay_id) for x in r.results] for r in responses] == [[1, 2], [3]]

    async def changing() -> AsyncIterator[pb.PublishRequest]:
        yield pb.PublishRequest(topic_name=topic, events=[event])
        yield pb.PublishRequest(topic_name="/event/Other__e", events=[event])

    error = await status_of(emulator.stub.PublishStream(changing(), metadata=METADATA))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_gap_and_overflow_events_are_header_only(emulator: Emulator) -> None:
    emulator.log.inject_gap(ORG, "Account", ["0015g0000000001AAA", "0015g0000000002AAA"], "GAP_UPDATE")
    emulator.log.inject_overflow(ORG, "Account")
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=2)

    events, _ = await sub.read_events(2)
    sub.cancel()

    account = cdc.change_event_schema(schema.ACCOUNT)
    gap, overflow = (decode_both(account.schema_json, e.event.payload) for e in events)
    assert gap["ChangeEventHeader"]["changeType"] == "GAP_UPDATE"
    assert gap["ChangeEventHeader"]["recordIds"] == ["0015g0000000001AAA", "0015g0000000002AAA"]
    assert gap["ChangeEventHeader"]["sequenceNumber"] == 1
    assert overflow["ChangeEventHeader"]["changeType"] == "GAP_OVERFLOW"
    assert overflow["ChangeEventHeader"]["recordIds"] == []
    for decoded in (gap, overflow):
        assert all(value is None for name, value in decoded.items() if name != "ChangeEventHeader")


async def test_drop_streams_cuts_open_subscriptions(emulator: Emulator) -> None:
    sub = Subscription(emulator.stub)
    sub.send(topic_name="/data/AccountChangeEvent", num_requested=1)
    await sub.read(KEEPALIVE * 3)  # the subscription is live

    assert emulator.log.drop_streams(ORG) == 1
    error = await status_of(sub.call)

    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_managed_subscribe_is_unimplemented(emulator: Emulator) -> None:
    async def requests() -> AsyncIterator[pb.ManagedFetchRequest]:
        yield pb.ManagedFetchRequest(developer_name="Sub", num_requested=1)

    error = await status_of(emulator.stub.ManagedSubscribe(requests(), metadata=METADATA))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_service_reports_serving(emulator: Emulator) -> None:
    health = health_pb2_grpc.HealthStub(emulator.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_tls_server_accepts_a_client_trusting_its_certificate() -> None:
    cert_pem, key_pem = _self_signed()
    log = EventLog(schema_for)
    port = free_port()
    server = build_pubsub_server(
        "127.0.0.1", port, tls=(cert_pem, key_pem), log=log, schema_for=schema_for, authenticate=authenticate
    )
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        options = (("grpc.ssl_target_name_override", "localhost"),)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
            stub = pb_grpc.PubSubStub(channel)
            info = await stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=METADATA)
    finally:
        await server.stop(None)
    assert info.tenant_guid == ORG


async def test_large_events_are_split_across_responses_under_the_client_limit(emulator: Emulator) -> None:
    topic = "/event/NewOrderConfirmation__e"
    schema_id = (await emulator.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=METADATA)).schema_id
    big = pb.ProducerEvent(schema_id=schema_id, payload=b"\x07" * 900_000)
    for _ in range(4):
        request = pb.PublishRequest(topic_name=topic, events=[big, big])
        await emulator.stub.Publish(request, metadata=METADATA)
    sub = Subscription(emulator.stub)
    sub.send(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=8)

    # The default client receive limit is 4 MB: any larger response would fail the call.
    events, responses = await sub.read_events(8)
    sub.cancel()

    assert [replay_of(e) for e in events] == list(range(1, 9))
    assert len(responses) >= 3
    assert all(r.ByteSize() <= 4 * 1024 * 1024 for r in responses)
    assert responses[-1].pending_num_requested == 0

"""cdc-ingest's Pub/Sub client and stream against a scripted channel (no I/O): flow control,
schema caching, a broken call, a keepalive moving the checkpoint, and undecodable events moved past.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import grpc
import pytest
from duplex.change.v1 import record_changed_pb2
from eventbus.v1 import pubsub_api_pb2 as pb

from services.cdc_ingest.pubsub import PubSubAuthError, PubSubClient, PubSubError, PubSubUnavailableError, Start
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import Store
from services.cdc_ingest.stream import StreamState
from services.cdc_ingest.worker import TenantWorker
from services.common.salesforce import Session
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from tests.unit.cdc_ingest.schemas import ACCOUNT_SCHEMA, encode, header

pytestmark = pytest.mark.unit

TOPIC = "/data/ChangeEvents"
BATCH = 5
SCHEMA_JSON = json.dumps(ACCOUNT_SCHEMA)
# What one read of a scripted call yields: a response, or an error the call fails with.
Step = pb.FetchResponse | BaseException


@dataclass(frozen=True)
class Ended:
    """A call the server ended before the client's first request: writing to it fails (grpc's
    InvalidStateError) and only its status says why."""

    status: grpc.StatusCode
    error_code: str = ""


class ScriptedCall:
    """One Subscribe call: its script is read in order, then it stays silent."""

    def __init__(self, script: Sequence[Step] | Ended, journal: list[str]) -> None:
        self.requests: list[pb.FetchRequest] = []
        self._ended = script if isinstance(script, Ended) else None
        self._script = [] if isinstance(script, Ended) else list(script)
        self._journal = journal

    async def code(self) -> grpc.StatusCode:
        assert self._ended is not None
        return self._ended.status

    async def details(self) -> str:
        return "ended by the server"

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        assert self._ended is not None
        return grpc.aio.Metadata(("error-code", self._ended.error_code))

    async def write(self, request: pb.FetchRequest) -> None:
        if self._ended is not None:
            raise asyncio.InvalidStateError("RPC already finished.")
        self.requests.append(request)
        self._journal.append(f"request {request.num_requested}")

    async def read(self) -> pb.FetchResponse:
        if not self._script:
            await asyncio.Event().wait()
        step = self._script.pop(0)
        if isinstance(step, BaseException):
            raise step
        self._journal.append(f"response pending={step.pending_num_requested}")
        return step

    def cancel(self) -> bool:
        return True


class ScriptedChannel:
    """Stands in for ``grpc.aio.Channel`` under the generated stub: one script per Subscribe call."""

    def __init__(
        self, *scripts: Sequence[Step] | Ended, schemas: dict[str, list[str | BaseException]] | None = None
    ) -> None:
        self.journal: list[str] = []
        self.calls: list[ScriptedCall] = []
        self.schema_requests: list[str] = []
        self._scripts = list(scripts)
        # GetSchema's answers (a schema text, or an error to fail with) by schema id, in order; then SCHEMA_JSON.
        self._schemas = schemas or {}

    def stream_stream(self, method: str, **_: Any) -> Callable[..., ScriptedCall]:
        def subscribe(request_iterator: None = None, *, metadata: Any = None) -> ScriptedCall:
            assert method.endswith("/Subscribe"), method
            assert dict(metadata)["accesstoken"] == "token"
            call = ScriptedCall(self._scripts.pop(0) if self._scripts else [], self.journal)
            self.calls.append(call)
            return call

        return subscribe

    def unary_unary(self, method: str, **_: Any) -> Callable[..., Awaitable[pb.SchemaInfo]]:
        async def get_schema(request: pb.SchemaRequest, *, metadata: Any = None) -> pb.SchemaInfo:
            assert method.endswith("/GetSchema"), method
            self.schema_requests.append(request.schema_id)
            answers = self._schemas.get(request.schema_id)
            answer = answers.pop(0) if answers else SCHEMA_JSON
            if isinstance(answer, BaseException):
                raise answer
            return pb.SchemaInfo(schema_json=answer, schema_id=request.schema_id)

        return get_schema

    def client(self) -> PubSubClient:
        return PubSubClient(cast(grpc.aio.Channel, self), StaticTokens(), "00D000000000001AAA")


class StaticTokens:
    async def current(self) -> Session:
        return Session("token", "https://org.example")

    async def refresh(self, stale: Session) -> Session:
        return stale


def response(*events: pb.ConsumerEvent, pending: int, latest: int = 0) -> pb.FetchResponse:
    return pb.FetchResponse(
        events=events, latest_replay_id=latest.to_bytes(8, "big") if latest else b"", pending_num_requested=pending
    )


def event(replay: int, schema_id: str = "schema-1", entity: str = "Opportunity") -> pb.ConsumerEvent:
    """A change event of an object the tenant does not sync: decoded, checkpointed past, not published."""
    payload = encode({"ChangeEventHeader": header(entityName=entity, changeType="CREATE")})
    return pb.ConsumerEvent(
        event=pb.ProducerEvent(id=f"e{replay}", schema_id=schema_id, payload=payload),
        replay_id=replay.to_bytes(8, "big"),
    )


def corrupt(replay: int, schema_id: str = "schema-1") -> pb.ConsumerEvent:
    """An event whose first object field names branch 5 of its ["null", T] union (fastavro: IndexError)."""
    good = event(replay, schema_id).event.payload
    body = len(ACCOUNT_SCHEMA["fields"]) - 1
    payload = good[:-body] + b"\x0a" + good[-body + 1 :]
    return pb.ConsumerEvent(
        event=pb.ProducerEvent(id=f"e{replay}", schema_id=schema_id, payload=payload),
        replay_id=replay.to_bytes(8, "big"),
    )


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "dropped", None)


async def test_the_next_fetch_request_goes_out_only_when_nothing_is_pending_and_the_batch_was_handled() -> None:
    channel = ScriptedChannel([response(event(1), pending=3), response(event(2), pending=0), response(pending=BATCH)])
    # The async generator subscribe() returns, typed as an iterator; closed so the call is cancelled.
    stream = cast(
        AsyncGenerator[pb.FetchResponse],
        channel.client().subscribe(TOPIC, Start.earliest(), batch=BATCH, idle_timeout=5),
    )
    try:
        await anext(stream)
        assert channel.journal == [f"request {BATCH}", "response pending=3"]
        await anext(stream)
        # Nothing pending, but the caller is still handling this batch: no request yet.
        assert channel.journal[-1] == "response pending=0"
        await asyncio.sleep(0.05)
        assert channel.journal[-1] == "response pending=0"
        await anext(stream)
    finally:
        await stream.aclose()
    assert channel.journal == [
        f"request {BATCH}",
        "response pending=3",
        "response pending=0",
        f"request {BATCH}",
        f"response pending={BATCH}",
    ]
    first, then = channel.calls[0].requests
    assert (first.topic_name, first.replay_preset, first.num_requested) == (TOPIC, pb.EARLIEST, BATCH)
    assert then.num_requested == BATCH


async def test_a_broken_subscription_raises_unavailable() -> None:
    channel = ScriptedChannel([unavailable()])
    stream = channel.client().subscribe(TOPIC, Start.after(b"\x00" * 8), batch=BATCH, idle_timeout=5)
    with pytest.raises(PubSubUnavailableError):
        await anext(stream)


@pytest.mark.parametrize(
    ("ended", "expected"),
    [
        (Ended(grpc.StatusCode.UNAUTHENTICATED, "sfdc.platform.eventbus.grpc.service.auth.error"), PubSubAuthError),
        (Ended(grpc.StatusCode.OK), PubSubUnavailableError),
    ],
)
async def test_a_call_the_server_ended_before_the_first_request_fails_with_the_calls_own_status(
    ended: Ended, expected: type[PubSubError]
) -> None:
    # A refused token must not pass for a broken stream: the stream logs in again only on an auth error.
    stream = ScriptedChannel(ended).client().subscribe(TOPIC, Start.earliest(), batch=BATCH, idle_timeout=5)
    with pytest.raises(PubSubError) as raised:
        await anext(stream)
    assert type(raised.value) is expected


async def test_get_schema_is_asked_once_per_schema_id() -> None:
    channel = ScriptedChannel()
    client = channel.client()
    first = await client.schema("schema-1")
    assert await client.schema("schema-1") is first
    await client.schema("schema-2")
    await client.schema("schema-1")
    assert channel.schema_requests == ["schema-1", "schema-2"]


class Checkpoints:
    """The part of Store the stream writes to."""

    def __init__(self) -> None:
        self.saved: list[tuple[bytes, datetime | None]] = []
        self.changed = asyncio.Event()

    async def save_checkpoint(
        self, tenant_id: str, channel: str, replay_id: bytes, commit_time: datetime | None
    ) -> None:
        self.saved.append((replay_id, commit_time))
        self.changed.set()

    async def log_event(self, tenant_id: str, event: str, **_: Any) -> None:
        raise AssertionError(f"unexpected sync log event {event}")


class CheckpointsAndLog(Checkpoints):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, Any]] = []

    async def log_event(self, tenant_id: str, event: str, **fields: Any) -> None:
        self.logged.append({"event": event, **fields})


class OrgOnly:
    async def org_id(self) -> str:
        return "00D000000000001AAA"


class NoSink:
    max_request_size = 1024 * 1024

    async def publish(
        self, changes: Sequence[record_changed_pb2.RecordChanged]
    ) -> list[record_changed_pb2.RecordChanged]:
        raise AssertionError(f"nothing should be published: {list(changes)}")

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


class DeadLetters(NoSink):
    def __init__(self) -> None:
        self.letters: list[tuple[bytes, dict[str, str]]] = []

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        self.letters.append((payload, origin))


async def stream_until(
    channel: ScriptedChannel,
    done: Callable[[Checkpoints], bool],
    *,
    store: Checkpoints | None = None,
    sink: NoSink | None = None,
) -> Checkpoints:
    """Run one tenant's stream (Account only) over ``channel`` until ``done``; its checkpoints."""
    document = {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {
            "salesforce": {
                "instanceUrl": "https://org.example",
                "apiVersion": "62.0",
                "auth": {
                    "mode": "password",
                    "clientId": "duplex",
                    "clientSecret": {"secretRef": {"env": "SECRET"}},
                    "username": "admin@org.example",
                    "password": {"secretRef": {"env": "PASSWORD"}},
                },
                "dailyApiCap": 100_000,
            },
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "fields": [{"app": "name", "salesforce": "Name"}],
                }
            ],
        },
    }
    store = store or Checkpoints()

    async def pubsub_for(_org_id: str) -> PubSubClient:
        return channel.client()

    async def no_pause(_seconds: float) -> None:
        await asyncio.sleep(0)

    worker = TenantWorker(
        tenant_id="acme",
        config=parse_tenant_config(document),
        settings=CdcIngestSettings(
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
            postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
            fetch_batch=BATCH,
        ),
        rest=cast(SalesforceRest, OrgOnly()),
        pubsub_factory=pubsub_for,
        store=cast(Store, store),
        sink=sink or NoSink(),
        sleep=no_pause,
    )
    task = asyncio.create_task(worker.stream.run(StreamState(Start.after((1).to_bytes(8, "big")))))
    try:
        async with asyncio.timeout(5):
            while not done(store):
                store.changed.clear()
                await store.changed.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return store


async def test_a_keepalive_moves_the_checkpoint_to_its_latest_replay_id() -> None:
    channel = ScriptedChannel([response(pending=BATCH, latest=7)])
    store = await stream_until(channel, lambda s: bool(s.saved))
    assert store.saved == [((7).to_bytes(8, "big"), None)]


async def test_the_stream_asks_for_at_most_its_batch_and_reads_each_schema_once_across_reconnects() -> None:
    channel = ScriptedChannel(
        [response(event(2), event(3), pending=3), response(event(4), pending=0), unavailable()],
        [response(event(5), event(6, "schema-2"), pending=BATCH - 2)],
    )
    store = await stream_until(channel, lambda s: len(s.saved) == 3)
    assert [int.from_bytes(replay, "big") for replay, _ in store.saved] == [3, 4, 6]
    # Resumed after the last checkpoint, not from the start.
    resumed = channel.calls[1].requests[0]
    assert (resumed.replay_preset, int.from_bytes(resumed.replay_id, "big")) == (pb.CUSTOM, 4)
    assert [r.num_requested for call in channel.calls for r in call.requests] == [BATCH, BATCH, BATCH]
    assert channel.schema_requests == ["schema-1", "schema-2"]


async def test_an_undecodable_event_is_dead_lettered_and_checkpointed_past_without_a_reconnect() -> None:
    bad = corrupt(3)
    channel = ScriptedChannel([response(event(2), bad, event(4), pending=0)])
    store, sink = CheckpointsAndLog(), DeadLetters()
    await stream_until(channel, lambda s: bool(s.saved), store=store, sink=sink)
    assert [int.from_bytes(replay, "big") for replay, _ in store.saved] == [4]
    replay = bad.replay_id.hex()
    assert sink.letters == [(bad.event.payload, {"channel": TOPIC, "replay-id": replay, "schema-id": "schema-1"})]
    [logged] = store.logged
    assert (logged["event"], logged["code"]) == ("cdc.undecodable", "UNDECODABLE_EVENT")
    assert logged["detail"] | {"error": ""} == {
        "channel": TOPIC,
        "replay_id": replay,
        "schema_id": "schema-1",
        "stage": "payload",
        "error_type": "IndexError",
        "error": "",
    }
    assert len(channel.calls) == 1


async def test_an_event_whose_schema_text_is_garbage_is_dead_lettered_and_the_next_one_read() -> None:
    channel = ScriptedChannel([response(event(2, "garbled"), event(3), pending=0)], schemas={"garbled": ["{nope"]})
    store, sink = CheckpointsAndLog(), DeadLetters()
    await stream_until(channel, lambda s: bool(s.saved), store=store, sink=sink)
    assert [int.from_bytes(replay, "big") for replay, _ in store.saved] == [3]
    assert [origin["schema-id"] for _, origin in sink.letters] == ["garbled"]
    assert [entry["detail"]["stage"] for entry in store.logged] == ["schema"]
    assert len(channel.calls) == 1


async def test_a_failed_get_schema_call_is_not_the_events_fault_the_stream_reconnects_and_reads_it() -> None:
    channel = ScriptedChannel(
        [response(event(2, "flaky"), pending=0)],
        [response(event(2, "flaky"), pending=BATCH)],
        schemas={"flaky": [unavailable()]},
    )
    store, sink = CheckpointsAndLog(), DeadLetters()
    await stream_until(channel, lambda s: bool(s.saved), store=store, sink=sink)
    assert [int.from_bytes(replay, "big") for replay, _ in store.saved] == [2]
    assert (sink.letters, store.logged) == ([], [])
    assert len(channel.calls) == 2

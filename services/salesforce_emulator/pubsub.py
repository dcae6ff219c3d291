"""The Pub/Sub API (gRPC ``eventbus.v1.PubSub``) over the emulator's event log.

Behaviour follows Salesforce's documentation and the official example clients:

* Authentication from the ``accesstoken``, ``instanceurl`` and ``tenantid`` metadata on every call.
* Subscribe is pull-based: at most 100 events outstanding per call (a larger request counts as
  100), later FetchRequests add to what is pending, and every FetchResponse reports the exact
  ``pending_num_requested``. Replay presets come from the first request only. An idle stream gets
  an empty keepalive FetchResponse carrying ``latest_replay_id``.
* Errors carry Salesforce's ``error-code`` trailer and ``rpcId: <id>`` in the status message.
* Change event channels are subscribe-only; platform events (``/event/X__e``, defined as
  ``X__e`` objects in the org's schema) can be published and subscribed. Custom channels
  (``__chn``) and ManagedSubscribe are not emulated (ManagedSubscribe answers UNIMPLEMENTED).

Subscribe responses are produced as protobuf bytes: each logged event carries its pre-encoded
``ConsumerEvent`` entry, so a batch of 100 is one byte join (see ``event_log``).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

import grpc
from eventbus.v1 import pubsub_api_pb2 as pb
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from services.salesforce_emulator import cdc
from services.salesforce_emulator.event_log import EventLog, LoggedEvent, SchemaFor, replay_bytes, replay_int
from services.salesforce_emulator.schema import ObjectDef

SERVICE_NAME: Final = "eventbus.v1.PubSub"
MAX_PENDING: Final = 100
MAX_KEEPALIVE_SECONDS: Final = 270.0
MAX_EVENT_BYTES: Final = 1024 * 1024
# Clients keep gRPC's default 4 MB receive limit; Salesforce advises ~3 MB client buffers.
MAX_RESPONSE_BYTES: Final = 3 * 1024 * 1024

ERROR_AUTH: Final = "sfdc.platform.eventbus.grpc.service.auth.error"
ERROR_REPLAY_CORRUPTED: Final = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
ERROR_REQUESTED_INVALID: Final = "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid"
ERROR_TOPIC_NOT_FOUND: Final = "sfdc.platform.eventbus.grpc.subscription.topic.notfound"
ERROR_TOPIC_CHANGED: Final = "sfdc.platform.eventbus.grpc.subscription.topic.changed"
ERROR_SCHEMA_NOT_FOUND: Final = "sfdc.platform.eventbus.grpc.schema.notfound"
ERROR_PUBLISH_NOT_ALLOWED: Final = "sfdc.platform.eventbus.grpc.publish.topic.not.allowed"
ERROR_UNAVAILABLE: Final = "sfdc.platform.eventbus.grpc.service.unavailable"
ERROR_UNIMPLEMENTED: Final = "sfdc.platform.eventbus.grpc.service.unimplemented"

# (access_token, instance_url, tenant_id) -> org id; raises when the caller is not authenticated.
Authenticate = Callable[[str, str, str], str | Awaitable[str]]


# --- pure parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """A channel an org can use."""

    name: str
    kind: Literal["change_events", "change_event", "platform_event"]
    # None for /data/ChangeEvents, whose events each carry their own object's schema.
    schema: cdc.EventSchema | None

    @property
    def can_publish(self) -> bool:
        return self.kind == "platform_event"


def resolve_topic(name: str, objects: Mapping[str, ObjectDef]) -> Topic | None:
    """The topic called ``name`` (channel names are case-sensitive), or None."""
    if name == cdc.ALL_CHANGE_EVENTS_CHANNEL:
        return Topic(name, "change_events", None)
    if name.startswith("/event/") and name.endswith("__e"):
        obj = objects.get(name[len("/event/") :])
        return Topic(name, "platform_event", cdc.platform_event_schema(obj)) if obj else None
    if name.startswith("/data/") and name.endswith("ChangeEvent"):
        event_name = name[len("/data/") :]
        for obj in objects.values():
            # Custom metadata types have no change event entity at all, selected or not.
            if not obj.name.endswith("__e") and not obj.custom_metadata and obj.change_event_name == event_name:
                return Topic(name, "change_event", cdc.change_event_schema(obj))
    return None


def all_schemas(objects: Mapping[str, ObjectDef]) -> list[cdc.EventSchema]:
    """Every event schema an org's objects define (change events and platform events)."""
    return [
        cdc.platform_event_schema(obj) if obj.name.endswith("__e") else cdc.change_event_schema(obj)
        for obj in objects.values()
        if not obj.custom_metadata
    ]


class FlowControl:
    """Pending-count bookkeeping of one Subscribe call."""

    def __init__(self, cap: int = MAX_PENDING) -> None:
        self.cap = cap
        self.pending = 0

    def request(self, num_requested: int) -> None:
        """A FetchRequest adds to what is pending, never beyond the cap."""
        self.pending = min(self.pending + max(num_requested, 0), self.cap)

    def delivered(self, count: int) -> None:
        self.pending -= count


def within_budget(batch: list[LoggedEvent], budget: int = MAX_RESPONSE_BYTES) -> list[LoggedEvent]:
    """The longest prefix of ``batch`` whose wire size fits ``budget``; never empty if batch is not."""
    total = 0
    for index, event in enumerate(batch):
        total += len(event.wire)
        if total > budget and index:
            return batch[:index]
    return batch


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fetch_response_wire(entries: Sequence[bytes], latest_replay_id: bytes, rpc_id_field: bytes, pending: int) -> bytes:
    """A serialized FetchResponse from pre-encoded event entries (fields in number order)."""
    tail = b"\x12" + _varint(len(latest_replay_id)) + latest_replay_id + rpc_id_field
    if pending:
        tail += b"\x20" + _varint(pending)
    return b"".join(entries) + tail if entries else tail


def rpc_id_field(rpc_id: str) -> bytes:
    """FetchResponse field 3 (rpc_id) in wire form, encoded once per call."""
    raw = rpc_id.encode()
    return b"\x1a" + _varint(len(raw)) + raw


# --- the service ---------------------------------------------------------------------------------


class PubSubError(Exception):
    """Raised inside the servicer to end a call with a Salesforce error."""

    def __init__(self, code: grpc.StatusCode, error_code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error_code = error_code
        self.message = message


async def _abort(context: grpc.aio.ServicerContext[object, object], rpc_id: str, error: PubSubError) -> NoReturn:
    await context.abort(
        error.code,
        f"{error.message} rpcId: {rpc_id}",
        trailing_metadata=(("error-code", error.error_code),),
    )
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


@dataclass
class _StreamState:
    error: PubSubError | None = None
    closed: bool = False


class PubSubService:
    """The ``eventbus.v1.PubSub`` handlers over an :class:`EventLog`."""

    def __init__(
        self,
        log: EventLog,
        schema_for: SchemaFor,
        authenticate: Authenticate,
        *,
        keepalive_seconds: float = MAX_KEEPALIVE_SECONDS,
    ) -> None:
        if not 0 < keepalive_seconds <= MAX_KEEPALIVE_SECONDS:
            msg = f"keepalive must be within (0, {MAX_KEEPALIVE_SECONDS}] seconds"
            raise ValueError(msg)
        self._log = log
        self._schema_for = schema_for
        self._authenticate = authenticate
        self._keepalive = keepalive_seconds

    async def _org(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        try:
            result = self._authenticate(
                metadata.get("accesstoken", ""), metadata.get("instanceurl", ""), metadata.get("tenantid", "")
            )
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:
            raise PubSubError(grpc.StatusCode.UNAUTHENTICATED, ERROR_AUTH, "Authentication failed.") from exc

    def _topic(self, org_id: str, name: str) -> Topic:
        topic = resolve_topic(name, self._schema_for(org_id))
        if topic is None:
            raise PubSubError(grpc.StatusCode.NOT_FOUND, ERROR_TOPIC_NOT_FOUND, f"Topic {name!r} not found.")
        if topic.schema is not None:
            self._log.register_schema(topic.schema.schema_id, topic.schema.schema_json)
        return topic

    # --- unary -----------------------------------------------------------------------------------

    async def get_topic(
        self, request: pb.TopicRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.TopicInfo:
        rpc_id = str(uuid.uuid4())
        try:
            org_id = await self._org(context)
            topic = self._topic(org_id, request.topic_name)
        except PubSubError as error:
            await _abort(context, rpc_id, error)
        return pb.TopicInfo(
            topic_name=topic.name,
            tenant_guid=org_id,
            can_publish=topic.can_publish,
            can_subscribe=True,
            schema_id=topic.schema.schema_id if topic.schema else "",
            rpc_id=rpc_id,
        )

    async def get_schema(
        self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.SchemaInfo:
        rpc_id = str(uuid.uuid4())
        try:
            org_id = await self._org(context)
        except PubSubError as error:
            await _abort(context, rpc_id, error)
        schema_json = self._log.schema_json(request.schema_id)
        if schema_json is None:
            # Schemas of objects no event or topic lookup has touched yet.
            for schema in all_schemas(self._schema_for(org_id)):
                self._log.register_schema(schema.schema_id, schema.schema_json)
            schema_json = self._log.schema_json(request.schema_id)
        if schema_json is None:
            missing = PubSubError(grpc.StatusCode.NOT_FOUND, ERROR_SCHEMA_NOT_FOUND, "Schema not found.")
            await _abort(context, rpc_id, missing)
        return pb.SchemaInfo(schema_json=schema_json, schema_id=request.schema_id, rpc_id=rpc_id)

    def _publish(
        self, org_id: str, topic: Topic, events: Sequence[pb.ProducerEvent], rpc_id: str
    ) -> pb.PublishResponse:
        if not topic.can_publish or topic.schema is None:
            raise PubSubError(
                grpc.StatusCode.PERMISSION_DENIED,
                ERROR_PUBLISH_NOT_ALLOWED,
                f"Publishing to {topic.name!r} is not allowed.",
            )
        results: list[pb.PublishResult] = []
        accepted: list[tuple[str, str, bytes]] = []
        accepted_at: list[int] = []
        for event in events:
            event_id = event.id or str(uuid.uuid4())
            if event.schema_id != topic.schema.schema_id and self._log.schema_json(event.schema_id) is None:
                error = pb.Error(code=pb.PUBLISH, msg=f"Unknown schema id {event.schema_id!r}.")
                results.append(pb.PublishResult(error=error, correlation_key=event_id))
                continue
            if len(event.payload) > MAX_EVENT_BYTES:
                error = pb.Error(code=pb.PUBLISH, msg="Event exceeds the 1 MB size limit.")
                results.append(pb.PublishResult(error=error, correlation_key=event_id))
                continue
            # The payload is stored as given: Salesforce does not validate published Avro either.
            accepted_at.append(len(results))
            accepted.append((event_id, event.schema_id, event.payload))
            results.append(pb.PublishResult(correlation_key=event_id))
        for index, replay in zip(accepted_at, self._log.append(org_id, topic.name, accepted), strict=True):
            results[index].replay_id = replay_bytes(replay)
        return pb.PublishResponse(results=results, schema_id=topic.schema.schema_id, rpc_id=rpc_id)

    async def publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.PublishResponse:
        rpc_id = str(uuid.uuid4())
        try:
            org_id = await self._org(context)
            return self._publish(org_id, self._topic(org_id, request.topic_name), request.events, rpc_id)
        except PubSubError as error:
            await _abort(context, rpc_id, error)

    # --- streams ---------------------------------------------------------------------------------

    async def publish_stream(
        self, requests: AsyncIterator[pb.PublishRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.PublishResponse]:
        rpc_id = str(uuid.uuid4())
        try:
            org_id = await self._org(context)
            topic: Topic | None = None
            async for request in requests:
                if topic is None:
                    topic = self._topic(org_id, request.topic_name)
                elif request.topic_name and request.topic_name != topic.name:
                    raise PubSubError(
                        grpc.StatusCode.INVALID_ARGUMENT, ERROR_TOPIC_CHANGED, "The topic of a stream cannot change."
                    )
                yield self._publish(org_id, topic, request.events, rpc_id)
        except PubSubError as error:
            await _abort(context, rpc_id, error)

    async def managed_subscribe(
        self, requests: AsyncIterator[pb.ManagedFetchRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.ManagedFetchResponse]:
        rpc_id = str(uuid.uuid4())
        error = PubSubError(grpc.StatusCode.UNIMPLEMENTED, ERROR_UNIMPLEMENTED, "ManagedSubscribe is not emulated.")
        await _abort(context, rpc_id, error)
        yield pb.ManagedFetchResponse()  # pragma: no cover - makes this an async generator

    def _start(self, org_id: str, topic: Topic, first: pb.FetchRequest) -> int:
        """The replay id the subscription reads after."""
        if first.replay_preset == pb.EARLIEST:
            self._log.can_resume_after(org_id, 0)  # applies retention, so the floor is current
            return self._log.floor(org_id)
        if first.replay_preset == pb.CUSTOM:
            replay = replay_int(first.replay_id)
            if replay is None or not self._log.can_resume_after(org_id, replay):
                raise PubSubError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ERROR_REPLAY_CORRUPTED,
                    f"The Replay ID validation failed for topic {topic.name!r}: the replay id is invalid or expired.",
                )
            return replay
        return self._log.head(org_id)

    async def subscribe(
        self, requests: AsyncIterator[pb.FetchRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[bytes]:
        rpc_id = str(uuid.uuid4())
        try:
            async for response in self._subscribe(requests, context, rpc_id):
                yield response
        except PubSubError as error:
            await _abort(context, rpc_id, error)

    async def _subscribe(
        self, requests: AsyncIterator[pb.FetchRequest], context: grpc.aio.ServicerContext[object, object], rpc_id: str
    ) -> AsyncIterator[bytes]:
        org_id = await self._org(context)
        iterator = aiter(requests)
        first = await anext(iterator, None)
        if first is None:
            return
        topic = self._topic(org_id, first.topic_name)
        if first.num_requested < 0:
            raise PubSubError(
                grpc.StatusCode.INVALID_ARGUMENT, ERROR_REQUESTED_INVALID, "num_requested must not be negative."
            )
        cursor = self._start(org_id, topic, first)
        flow = FlowControl()
        flow.request(first.num_requested)
        rpc_field = rpc_id_field(rpc_id)
        state = _StreamState()
        loop = asyncio.get_running_loop()
        with self._log.watch(org_id) as watcher:

            async def read_requests() -> None:
                try:
                    async for request in iterator:
                        if request.topic_name and request.topic_name != topic.name:
                            state.error = PubSubError(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                ERROR_TOPIC_CHANGED,
                                "The topic of a subscription cannot change.",
                            )
                            break
                        if request.num_requested < 0:
                            state.error = PubSubError(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                ERROR_REQUESTED_INVALID,
                                "num_requested must not be negative.",
                            )
                            break
                        flow.request(request.num_requested)
                        watcher.notify()
                finally:
                    state.closed = True
                    watcher.notify()

            reader = asyncio.create_task(read_requests())
            try:
                last_sent = loop.time()
                while True:
                    watcher.clear()
                    if watcher.dropped:
                        raise PubSubError(
                            grpc.StatusCode.UNAVAILABLE, ERROR_UNAVAILABLE, "The stream was closed by the server."
                        )
                    if state.error is not None:
                        raise state.error
                    if flow.pending:
                        batch = within_budget(self._log.read_after(org_id, topic.name, cursor, flow.pending))
                        if batch:
                            cursor = batch[-1].replay
                            flow.delivered(len(batch))
                            yield fetch_response_wire(
                                [e.wire for e in batch], replay_bytes(cursor), rpc_field, flow.pending
                            )
                            last_sent = loop.time()
                            continue
                    elif state.closed:
                        return  # the client stopped asking and has everything it asked for
                    idle = loop.time() - last_sent
                    if idle >= self._keepalive:
                        latest = self._log.resume_point(org_id, topic.name, cursor)
                        yield fetch_response_wire((), replay_bytes(latest), rpc_field, flow.pending)
                        last_sent = loop.time()
                        continue
                    await watcher.wait(self._keepalive - idle)
            finally:
                reader.cancel()


def _handler(service: PubSubService) -> grpc.GenericRpcHandler[object, object]:
    # Registered by hand rather than through the generated add_PubSubServicer_to_server so that
    # Subscribe can return pre-serialized bytes (no response serializer).
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Subscribe": grpc.stream_stream_rpc_method_handler(
                service.subscribe, request_deserializer=pb.FetchRequest.FromString
            ),
            "GetSchema": grpc.unary_unary_rpc_method_handler(
                service.get_schema,
                request_deserializer=pb.SchemaRequest.FromString,
                response_serializer=pb.SchemaInfo.SerializeToString,
            ),
            "GetTopic": grpc.unary_unary_rpc_method_handler(
                service.get_topic,
                request_deserializer=pb.TopicRequest.FromString,
                response_serializer=pb.TopicInfo.SerializeToString,
            ),
            "Publish": grpc.unary_unary_rpc_method_handler(
                service.publish,
                request_deserializer=pb.PublishRequest.FromString,
                response_serializer=pb.PublishResponse.SerializeToString,
            ),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                service.publish_stream,
                request_deserializer=pb.PublishRequest.FromString,
                response_serializer=pb.PublishResponse.SerializeToString,
            ),
            "ManagedSubscribe": grpc.stream_stream_rpc_method_handler(
                service.managed_subscribe,
                request_deserializer=pb.ManagedFetchRequest.FromString,
                response_serializer=pb.ManagedFetchResponse.SerializeToString,
            ),
        },
    )


def build_pubsub_server(
    host: str,
    port: int,
    *,
    tls: tuple[bytes, bytes] | None,
    log: EventLog,
    schema_for: SchemaFor,
    authenticate: Authenticate,
    keepalive_seconds: float = MAX_KEEPALIVE_SECONDS,
) -> grpc.aio.Server:
    """A grpc.aio server (not started) with eventbus.v1.PubSub and the standard health service.

    ``tls`` is ``(certificate_chain_pem, private_key_pem)``; None listens in plaintext. Call from
    the event loop that will run the server; the caller starts and stops it.
    """
    service = PubSubService(log, schema_for, authenticate, keepalive_seconds=keepalive_seconds)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(service),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    address = f"{host}:{port}"
    if tls is None:
        server.add_insecure_port(address)
    else:
        cert_pem, key_pem = tls
        server.add_secure_port(address, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    return server

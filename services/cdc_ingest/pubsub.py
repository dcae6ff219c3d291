"""Salesforce's Pub/Sub API (gRPC ``eventbus.v1.PubSub``): authenticated, flow-controlled Subscribe.

* Metadata on every call: ``accesstoken``, ``instanceurl``, ``tenantid`` (the org id).
* Flow control: at most ``fetch_batch`` (≤ 100) events outstanding; the next FetchRequest goes out
  only when the server reports ``pending_num_requested == 0``, *after* the caller has handled the
  batch (the generator is suspended meanwhile), so memory stays bounded whatever the backlog.
* Keepalives (empty FetchResponses with ``latest_replay_id``) are passed on: the caller may
  checkpoint their replay id. No response at all within the idle timeout means a dead stream.
* Errors become :class:`ReplayIdInvalidError` (expired/corrupted replay id: catch up),
  :class:`PubSubAuthError` (log in again) or :class:`PubSubUnavailableError` (reconnect).
* Tracing: each response carrying events starts a trace of its own, one span per batch (not per
  event), current while the caller handles it, so what the caller publishes for the batch
  continues that trace into Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc
from opentelemetry import context, trace

from services.cdc_ingest.event_schema import ChangeEventSchema, parse_schema
from services.common.salesforce import SalesforceClient, Session

_tracer = trace.get_tracer(__name__)

REPLAY_ERROR_CODES = frozenset(
    {
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed",
    }
)
AUTH_ERROR_CODES = frozenset(
    {"sfdc.platform.eventbus.grpc.service.auth.error", "sfdc.platform.eventbus.grpc.service.auth.refresh.invalid"}
)


class PubSubError(Exception):
    def __init__(self, message: str, *, code: str = "", status: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ReplayIdInvalidError(PubSubError):
    """The replay id to resume after is expired or invalid: the gap must be caught up by reading."""


class PubSubAuthError(PubSubError):
    """The access token was refused."""


class PubSubUnavailableError(PubSubError):
    """The stream broke, went silent, or the server refused for another reason; reconnect later."""


def classify(error: grpc.aio.AioRpcError) -> PubSubError:
    return classify_status(error.code(), error.details(), error.trailing_metadata())


def classify_status(status: grpc.StatusCode, details: str | None, trailing_metadata: Any) -> PubSubError:
    """The error a call that ended with ``status`` stands for; Salesforce's ``error-code`` trailer decides first."""
    # grpc.aio.Metadata iterates as (key, value) pairs; its stubs do not say so.
    trailers: Any = trailing_metadata or ()
    code = next((str(value) for key, value in trailers if key == "error-code"), "")
    message = f"{status.name}: {details}"
    if code in REPLAY_ERROR_CODES:
        return ReplayIdInvalidError(message, code=code, status=status.name)
    if code in AUTH_ERROR_CODES or status is grpc.StatusCode.UNAUTHENTICATED:
        return PubSubAuthError(message, code=code, status=status.name)
    return PubSubUnavailableError(message, code=code, status=status.name)


class TokenSource(Protocol):
    async def current(self) -> Session: ...

    async def refresh(self, stale: Session) -> Session: ...


class ClientTokens:
    """The tenant's REST session, shared with :class:`SalesforceClient` (one login per tenant)."""

    def __init__(self, client: SalesforceClient) -> None:
        self._client = client

    async def current(self) -> Session:
        return await self._client.session()

    async def refresh(self, stale: Session) -> Session:
        return await self._client.refresh_session(stale)


@dataclass(frozen=True)
class Start:
    """Where a subscription starts: after ``replay_id`` (CUSTOM), or a preset."""

    preset: pb.ReplayPreset.ValueType
    replay_id: bytes = b""

    @classmethod
    def after(cls, replay_id: bytes) -> Start:
        return cls(pb.CUSTOM, replay_id)

    @classmethod
    def earliest(cls) -> Start:
        return cls(pb.EARLIEST)

    @classmethod
    def latest(cls) -> Start:
        return cls(pb.LATEST)


# How often the channel pings the server: the shortest interval default gRPC servers accept (see open_channel).
KEEPALIVE_TIME_MS = 300_000


def open_channel(target: str, ca_file: str | None) -> grpc.aio.Channel:
    roots = Path(ca_file).read_bytes() if ca_file else None
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates=roots),
        # HTTP/2 pings keep NATs and proxies from dropping a quiet stream between keepalives. Not
        # more often than every 5 minutes: that is the least a gRPC server with default settings
        # (grpc.http2.min_ping_interval_without_data_ms = 300 000) accepts while no data flows.
        # Pinging sooner earns a GOAWAY ENHANCE_YOUR_CALM "too_many_pings", and every call on the
        # channel fails with "UNAVAILABLE: Too many pings". A stream that stops answering is
        # caught by the subscription's own idle timeout (stream_idle_timeout_seconds), not by pings.
        options=[
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_permit_without_calls", 0),
        ],
    )


@contextmanager
def _batch_span(topic: str, events: int) -> Iterator[None]:
    """The span of one received batch, current while :meth:`PubSubClient.subscribe` is suspended
    at its ``yield``, that is while the caller handles the batch (an async generator runs in its
    caller's context); taken off when the caller asks for the next response. A caller that leaves
    the loop on an error does not come back: the span is ended, as failed, when the generator is
    closed."""
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "rpc.service": "eventbus.v1.PubSub",
        "rpc.method": "Subscribe",
        "messaging.destination.name": topic,
        "messaging.batch.message_count": events,
    }
    # A root: a batch of Salesforce changes starts their trace, whatever the worker ran under.
    span = _tracer.start_span(
        "eventbus.v1.PubSub/Subscribe receive",
        context=context.Context(),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    )
    token = context.attach(trace.set_span_in_context(span))
    handled = False
    try:
        yield
        handled = True
    finally:
        if not handled:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "batch not handled"))
        span.end()
        # Closed from elsewhere (the loop's finaliser), the caller's context is not ours to reset.
        if trace.get_current_span() is span:
            context.detach(token)


class PubSubClient:
    """One tenant's Pub/Sub access over a shared channel; caches schemas by id."""

    def __init__(self, channel: grpc.aio.Channel, tokens: TokenSource, org_id: str) -> None:
        self._stub = pb_grpc.PubSubStub(channel)
        self._tokens = tokens
        self._org_id = org_id
        self._schemas: dict[str, ChangeEventSchema] = {}

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        session = await self._tokens.current()
        return (
            ("accesstoken", session.access_token),
            ("instanceurl", session.instance_url),
            ("tenantid", self._org_id),
        )

    async def reauthenticate(self) -> None:
        await self._tokens.refresh(await self._tokens.current())

    async def schema(self, schema_id: str) -> ChangeEventSchema:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        try:
            info = await self._stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=await self._metadata())
        except grpc.aio.AioRpcError as error:
            raise classify(error) from error
        parsed = parse_schema(schema_id, info.schema_json)
        self._schemas[schema_id] = parsed
        return parsed

    async def subscribe(
        self, topic: str, start: Start, *, batch: int, idle_timeout: float
    ) -> AsyncIterator[pb.FetchResponse]:
        """FetchResponses (events and keepalives) until the stream fails; never ends normally."""
        # Requests go through the call's own write(), not a request generator: grpc consumes a
        # generator in a task of its own, which a cancelled call leaves pending (and its
        # generator unclosable) when the stream ends.
        call = self._stub.Subscribe(None, metadata=await self._metadata())

        async def write(request: pb.FetchRequest) -> None:
            try:
                await call.write(request)
            except asyncio.InvalidStateError:
                # The server ended the call first (it refuses a token before reading a request):
                # its status says why, and a refused token must not pass for a broken stream.
                status = await call.code()
                if status is grpc.StatusCode.OK:
                    raise PubSubUnavailableError(f"the server ended the stream on {topic}") from None
                raise classify_status(status, await call.details(), await call.trailing_metadata()) from None

        try:
            await write(
                pb.FetchRequest(
                    topic_name=topic, replay_preset=start.preset, replay_id=start.replay_id, num_requested=batch
                )
            )
            while True:
                try:
                    # Not asyncio.wait_for: on Python 3.11 it returns the result instead of raising
                    # when the caller is cancelled just as the response arrives (cpython gh-86296),
                    # so a stop during a busy replay was lost and the worker never ended.
                    # asyncio.timeout reads in this task, so a cancellation always propagates.
                    async with asyncio.timeout(idle_timeout):
                        response = await call.read()
                except TimeoutError as exc:
                    raise PubSubUnavailableError(f"no response on {topic} for {idle_timeout:.0f} s") from exc
                if not isinstance(response, pb.FetchResponse):  # grpc.aio.EOF
                    raise PubSubUnavailableError(f"the server ended the stream on {topic}")
                if response.events:
                    with _batch_span(topic, len(response.events)):
                        yield response
                else:
                    yield response
                if response.pending_num_requested == 0:
                    await write(pb.FetchRequest(topic_name=topic, num_requested=batch))
        except grpc.aio.AioRpcError as error:
            raise classify(error) from error
        finally:
            call.cancel()

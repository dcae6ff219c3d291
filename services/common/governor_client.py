"""The rate-limit-governor as a :class:`~services.common.salesforce.CallBudget`, over gRPC.

Every Salesforce call a service makes is first granted here. The client fails closed: when the
governor cannot be asked (down, timing out), no call is made; the caller gets a
:class:`GovernorUnavailable` (retryable) and tries again later, because calling Salesforce
without permission could put a tenant over its cap.

When the governor says "not yet", :meth:`GovernorBudget.acquire` sleeps until the ``not_before``
it was given and asks again, but never longer than ``max_wait`` in total: a tenant at its daily
cap may have to wait hours, and a caller that serves several tenants must get control back to
schedule its own retry (:class:`BudgetUnavailable` carries the time worth retrying at). The wait
is a plain ``asyncio.sleep``, so cancelling the caller cancels it.

Usage reports are advisory: a report that cannot be delivered is logged and dropped, because the
Salesforce call it describes already happened, and failing it would make the caller repeat work.
The next response's ``Sforce-Limit-Info`` carries the newer figure anyway.

Every call is a client span (``rpc.method``, ``duplex.tenant_id``) whose W3C trace context travels
in the call's metadata, so the governor's own span (and its PostgreSQL work) joins the caller's trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from duplex.governor.v1 import governor_pb2, governor_service_pb2, governor_service_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace

from services.common.errors import RetryableError
from services.common.settings import GovernorLinkSettings
from services.common.telemetry import client_span

if TYPE_CHECKING:
    Stub = governor_service_pb2_grpc.RateLimitGovernorServiceAsyncStub

log = logging.getLogger(__name__)

_tracer = trace.get_tracer(__name__)
GOVERNOR_SERVICE = "duplex.governor.v1.RateLimitGovernorService"

R = TypeVar("R")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]

# A denial without a usable not_before (should not happen) is retried after this long.
_DEFAULT_RETRY = timedelta(seconds=1)
# The longest a caller told "no budget" waits before asking again (see `acquire`).
ASK_AGAIN_WITHIN = timedelta(minutes=1)
# Never hammer the governor: even a not_before in the past waits this long before asking again.
_MIN_WAIT = timedelta(milliseconds=20)


class BudgetUnavailable(RetryableError):  # noqa: N818 (a state of the budget, as the governor reports it)
    """The governor denied the calls for longer than the caller is willing to wait now."""

    def __init__(self, tenant_id: str, not_before: datetime, reason: str) -> None:
        super().__init__(f"tenant {tenant_id}: no API budget before {not_before.isoformat()} ({reason})")
        self.tenant_id = tenant_id
        self.not_before = not_before
        self.reason = reason


class GovernorUnavailable(RetryableError):  # noqa: N818
    """The governor could not be asked; no Salesforce call may be made until it can."""


class UnknownTenant(Exception):  # noqa: N818
    """The governor has no configuration for this tenant, so it will never grant it calls."""


class GovernorBudget:
    """A :class:`CallBudget` that asks the rate-limit-governor before every call."""

    def __init__(
        self,
        stub: Stub,
        *,
        max_wait: timedelta = timedelta(seconds=30),
        rpc_timeout: float = 5.0,
        clock: Clock = lambda: datetime.now(UTC),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._stub = stub
        self._max_wait = max_wait
        self._rpc_timeout = rpc_timeout
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def connect(
        cls, target: str, link: GovernorLinkSettings | None = None, **options: object
    ) -> tuple[GovernorBudget, grpc.aio.Channel]:
        """A budget over a new channel to ``target``, secured as ``link`` says (:func:`governor_channel`);
        close the channel when done."""
        channel = governor_channel(target, link or GovernorLinkSettings())
        stub = governor_service_pb2_grpc.RateLimitGovernorServiceStub(channel)
        return cls(stub, **options), channel  # type: ignore[arg-type]

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        """Return once ``calls`` calls are granted; raise :class:`BudgetUnavailable` past ``max_wait``."""
        request = governor_service_pb2.AcquireCallsRequest(
            tenant_id=tenant_id,
            calls=calls,
            priority=governor_pb2.CALL_PRIORITY_BACKFILL if backfill else governor_pb2.CALL_PRIORITY_LIVE,
        )
        give_up_at = self._clock() + self._max_wait
        while True:
            response = await self._call(
                tenant_id,
                "AcquireCalls",
                lambda metadata: self._stub.AcquireCalls(request, timeout=self._rpc_timeout, metadata=metadata),
            )
            if response.granted:
                return
            now = self._clock()
            not_before = (
                response.not_before.ToDatetime(tzinfo=UTC) if response.HasField("not_before") else now + _DEFAULT_RETRY
            )
            if not_before > give_up_at:
                # The governor's time is what it knows now; an operator may raise the cap, or the org's
                # limit be lifted, meanwhile: callers pausing until then ask again at least this often.
                raise BudgetUnavailable(tenant_id, min(not_before, now + ASK_AGAIN_WITHIN), response.reason)
            await self._sleep(max(not_before - now, _MIN_WAIT).total_seconds())

    async def report(self, tenant_id: str, used: int, limit: int) -> None:
        """Tell the governor what Salesforce said about the org's usage (best effort, see module doc)."""
        observed = Timestamp()
        observed.FromDatetime(self._clock())
        request = governor_service_pb2.ReportUsageRequest(
            tenant_id=tenant_id, used=used, max=limit, observed_at=observed
        )
        try:
            await self._call(
                tenant_id,
                "ReportUsage",
                lambda metadata: self._stub.ReportUsage(request, timeout=self._rpc_timeout, metadata=metadata),
            )
        except (GovernorUnavailable, UnknownTenant) as exc:
            log.warning("usage report dropped", extra={"tenant_id": tenant_id, "reason": str(exc)})

    async def budget(self, tenant_id: str) -> governor_pb2.Budget:
        """The tenant's budget as the governor sees it."""
        request = governor_service_pb2.GetBudgetRequest(tenant_id=tenant_id)
        response = await self._call(
            tenant_id,
            "GetBudget",
            lambda metadata: self._stub.GetBudget(request, timeout=self._rpc_timeout, metadata=metadata),
        )
        return response.budget

    async def _call(
        self, tenant_id: str, method: str, call: Callable[[tuple[tuple[str, str], ...] | None], Awaitable[R]]
    ) -> R:
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": GOVERNOR_SERVICE,
            "rpc.method": method,
            "duplex.tenant_id": tenant_id,
        }
        with client_span(_tracer, f"{GOVERNOR_SERVICE}/{method}", attributes) as span:
            metadata = None
            if span.is_recording():
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                metadata = tuple(carrier.items())
            try:
                return await call(metadata)
            except grpc.aio.AioRpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise UnknownTenant(f"tenant {tenant_id}: {exc.details()}") from exc
                raise GovernorUnavailable(f"governor: {exc.code().name}: {exc.details()}") from exc


# The metadata key a client's token travels under (a bearer token, as HTTP's Authorization).
TOKEN_METADATA = "authorization"


if TYPE_CHECKING:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class _Token(_Interceptor):
    """Adds the shared token to every call."""

    def __init__(self, token: str) -> None:
        self._entry = (TOKEN_METADATA, f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), self._entry)
        return await continuation(client_call_details._replace(metadata=metadata), request)


def governor_channel(target: str, link: GovernorLinkSettings) -> grpc.aio.Channel:
    """A channel to the governor: TLS checked against ``link.tls_ca_file`` when set (plaintext
    otherwise, for a cluster whose network is trusted), with ``link.token`` on every call when set."""
    # grpc-stubs types interceptors as "cast me": a list of ours is what grpc takes.
    interceptors: Any = [_Token(link.token.get_secret_value())] if link.token else None
    if link.tls_ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(link.tls_ca_file).read_bytes())
        return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, interceptors=interceptors)

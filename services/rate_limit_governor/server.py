"""The governor's gRPC service: thin handlers over the budget arithmetic and the ledger.

Each call is a server span continuing the caller's trace (its W3C context comes in the call's
metadata, :mod:`services.common.governor_client`), so a grant shows inside the Salesforce call it
was asked for, with the ledger's PostgreSQL statements under it.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from duplex.governor.v1 import governor_pb2, governor_service_pb2, governor_service_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from services.common import sync_log
from services.common.governor_client import GOVERNOR_SERVICE, TOKEN_METADATA
from services.common.metrics import Metrics
from services.common.settings import GovernorLinkSettings
from services.common.telemetry import TRACE_HEADERS, tracing_enabled
from services.common.tenant_config import TenantNotFoundError
from services.rate_limit_governor import budget as b
from services.rate_limit_governor.ledger import Ledger

log = logging.getLogger(__name__)

_tracer = trace.get_tracer(__name__)


SERVICE = "rate-limit-governor"

_PRIORITY = {
    governor_pb2.CALL_PRIORITY_UNSPECIFIED: b.Priority.LIVE,
    governor_pb2.CALL_PRIORITY_LIVE: b.Priority.LIVE,
    governor_pb2.CALL_PRIORITY_BACKFILL: b.Priority.BACKFILL,
}


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _budget_message(tenant_id: str, budget: b.TenantBudget, now: datetime) -> governor_pb2.Budget:
    org = budget.org
    return governor_pb2.Budget(
        tenant_id=tenant_id,
        daily_cap=budget.limits.daily_cap,
        org_max=org.max if org else 0,
        org_used=org.used if org else 0,
        granted_24h=b.granted_in_window(budget, now),
        remaining=b.remaining(budget, now),
        warning=b.is_warning(budget, now),
        predicted_exhaustion=_timestamp(b.predicted_exhaustion(budget, now)),
    )


class Governor(governor_service_pb2_grpc.RateLimitGovernorServiceServicer):
    """One instance per process; any number of processes may share the database."""

    def __init__(
        self,
        ledger: Ledger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._metrics = metrics

    async def AcquireCalls(  # noqa: N802 - gRPC method name
        self, request: governor_service_pb2.AcquireCallsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> governor_service_pb2.AcquireCallsResponse:
        if not request.tenant_id or request.calls <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant_id and a positive calls are required")
        priority = _PRIORITY.get(request.priority, b.Priority.LIVE)
        now = self._clock()
        lease_id = uuid.uuid4().hex if request.long_running else None

        async def decide(budget: b.TenantBudget, conn: Any) -> tuple[b.TenantBudget, b.Grant]:
            grant = b.acquire(
                budget, request.calls, now, priority=priority, long_running=request.long_running, lease_id=lease_id
            )
            return await self._warned(conn, request.tenant_id, grant.budget, now), grant

        grant = await self._update(request.tenant_id, decide, context)
        self._observe(request.tenant_id, grant.budget, now)
        if self._metrics is not None:
            label = priority.name.lower()
            if grant.granted:
                self._metrics.governor_calls_granted.labels(request.tenant_id, label).inc(request.calls)
            else:
                self._metrics.governor_requests_denied.labels(request.tenant_id, label, grant.reason).inc()
        return governor_service_pb2.AcquireCallsResponse(
            granted=grant.granted,
            not_before=_timestamp(grant.not_before),
            lease_id=grant.lease_id or "",
            remaining=grant.remaining,
            reason=grant.reason,
        )

    async def ReleaseLease(  # noqa: N802
        self, request: governor_service_pb2.ReleaseLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> governor_service_pb2.ReleaseLeaseResponse:
        tenant_id = dict(context.invocation_metadata() or ()).get("tenant-id", "")
        if not tenant_id or not request.lease_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lease_id and tenant-id metadata are required")

        async def drop(budget: b.TenantBudget, _: Any) -> tuple[b.TenantBudget, None]:
            return b.release(budget, request.lease_id), None

        await self._update(str(tenant_id), drop, context)
        return governor_service_pb2.ReleaseLeaseResponse()

    async def ReportUsage(  # noqa: N802
        self, request: governor_service_pb2.ReportUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> governor_service_pb2.ReportUsageResponse:
        if not request.tenant_id or request.max <= 0 or request.used < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant_id, used >= 0 and max > 0 are required")
        now = self._clock()
        observed = request.observed_at.ToDatetime(tzinfo=UTC) if request.HasField("observed_at") else now
        usage = b.OrgUsage(request.used, request.max, observed)

        async def apply(budget: b.TenantBudget, conn: Any) -> tuple[b.TenantBudget, b.TenantBudget]:
            budget = await self._warned(conn, request.tenant_id, b.report(budget, usage), now)
            return budget, budget

        updated = await self._update(request.tenant_id, apply, context)
        self._observe(request.tenant_id, updated, now)
        return governor_service_pb2.ReportUsageResponse(budget=_budget_message(request.tenant_id, updated, now))

    async def GetBudget(  # noqa: N802
        self, request: governor_service_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> governor_service_pb2.GetBudgetResponse:
        now = self._clock()

        async def read(budget: b.TenantBudget, _: Any) -> tuple[b.TenantBudget, b.TenantBudget]:
            return budget, budget

        current = await self._update(request.tenant_id, read, context)
        return governor_service_pb2.GetBudgetResponse(budget=_budget_message(request.tenant_id, current, now))

    async def _update(self, tenant_id: str, change: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await self._ledger.update(tenant_id, change)
        except TenantNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def _warned(self, conn: Any, tenant_id: str, budget: b.TenantBudget, now: datetime) -> b.TenantBudget:
        """``budget`` with its warning state up to date; a sync-log row when it has just gone low."""
        budget, crossed = b.crossed_warning(budget, now)
        if crossed:
            left = b.remaining(budget, now)
            log.warning("budget warning", extra={"tenant_id": tenant_id, "remaining": left})
            await sync_log.record(
                conn,
                tenant_id=tenant_id,
                service=SERVICE,
                event="budget.warning",
                code="BUDGET_LOW",
                message=f"less than 10 % of the daily API budget left ({left} calls)",
                detail={"remaining": left},
            )
        return budget

    def _observe(self, tenant_id: str, budget: b.TenantBudget, now: datetime) -> None:
        """After each decision (grant, denial, usage report): the tenant's budget as it now stands."""
        if self._metrics is None:
            return
        self._metrics.api_budget_remaining.labels(tenant=tenant_id).set(b.remaining(budget, now))
        self._metrics.governor_budget_warning.labels(tenant_id).set(1 if b.is_warning(budget, now) else 0)
        exhaustion = b.predicted_exhaustion(budget, now)
        self._metrics.governor_predicted_exhaustion.labels(tenant_id).set(exhaustion.timestamp() if exhaustion else 0)


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor


class TokenCheck(_Interceptor):
    """Refuses (UNAUTHENTICATED) every call without the shared token, but health checks: a
    Kubernetes gRPC probe sends no metadata."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith(_HEALTH_METHODS):
            return await continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_METADATA, "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return await continuation(handler_call_details)
        return _REFUSED


_HEALTH_METHODS = "/grpc.health.v1.Health/"
_GOVERNOR_METHODS = f"/{GOVERNOR_SERVICE}/"


class Traced(_Interceptor):
    """Runs each governor call (not health checks) in a server span continuing the caller's trace."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(_GOVERNOR_METHODS):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        carrier = {key: str(value) for key, value in metadata if key in TRACE_HEADERS}
        name = method.removeprefix("/")
        attributes = {"rpc.system": "grpc", "rpc.service": GOVERNOR_SERVICE, "rpc.method": name.rsplit("/", 1)[1]}
        serve = handler.unary_unary

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with _tracer.start_as_current_span(
                name,
                context=propagate.extract(carrier) if carrier else None,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                # A refusal's details can quote a tenant's configuration: the span keeps its type only.
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await serve(request, context)
                except BaseException as exc:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                    raise

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the governor's token is missing or wrong")


_REFUSED = grpc.unary_unary_rpc_method_handler(_refuse)


async def start_server(
    governor: Governor, host: str, port: int, link: GovernorLinkSettings | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server with the governor and the standard health service, secured as
    ``link`` says (TLS with its certificate, the token checked); returns it and its port."""
    link = link or GovernorLinkSettings()
    interceptors: list[_Interceptor] = [TokenCheck(link.token.get_secret_value())] if link.token else []
    # Only when this process traces: otherwise every call would pay for a wrapped handler.
    if tracing_enabled():
        interceptors.append(Traced())
    server = grpc.aio.server(interceptors=interceptors or None)
    governor_service_pb2_grpc.add_RateLimitGovernorServiceServicer_to_server(governor, server)
    # grpc_health exposes the asyncio servicer as health.aio; its stubs do not know it yet.
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if link.tls_cert_file and link.tls_key_file:
        # Read once at start, before serving: nothing else waits on this loop yet.
        key, chain = Path(link.tls_key_file).read_bytes(), Path(link.tls_cert_file).read_bytes()  # noqa: ASYNC240
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(key, chain)]))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ("", governor_service_pb2.DESCRIPTOR.services_by_name["RateLimitGovernorService"].full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound

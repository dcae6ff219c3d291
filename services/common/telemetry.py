"""Tracing and metrics set-up for one service process.

Traces: one OpenTelemetry ``TracerProvider`` per process, its resource naming the service
(``service.name``). Tracing is on only when spans have somewhere to go: the exporter given (tests:
in memory) or, when ``TELEMETRY_OTLP_ENDPOINT`` is set, OTLP over gRPC. Without one, the process
keeps OpenTelemetry's no-op tracer and the Kafka paths skip tracing altogether (no span, no header),
because every microsecond per record counts there.

With tracing on, the W3C ``traceparent`` travels in the headers of every record a service
publishes, and the consuming service continues that trace, so one change can be followed from
cdc-ingest (or the app) to the writer's Salesforce call: faststream's tracing middleware does it
for single-record subscribers and publishers; batch subscribers and :class:`~services.common.kafka.Sender`
do it themselves (:func:`batch_span`). Hand-made spans cover Salesforce calls
(:mod:`services.common.salesforce`), PostgreSQL statements (:mod:`services.common.db`), the governor's
client and server, and each received Pub/Sub batch. Span attributes name operations, never values:
no tokens, no record values, no query parameters. Every JSON log line written inside a span carries
its ``trace_id`` and ``span_id`` (:mod:`services.common.logging`).

Metrics: one ``prometheus_client`` registry per process holding :class:`Metrics` and
faststream's Kafka Prometheus middleware; served on ``TELEMETRY_METRICS_PORT`` when > 0, beside the
health probes (:mod:`services.common.probes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from faststream.kafka.opentelemetry.provider import KafkaTelemetrySettingsProvider
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.opentelemetry.middleware import TelemetryMiddleware
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry

from services.common.metrics import FASTSTREAM_METRICS_PREFIX, Metrics
from services.common.settings import TelemetrySettings

if TYPE_CHECKING:
    from faststream._internal.types import BrokerMiddleware


# The W3C trace context headers (tracestate only when a vendor set one).
TRACE_HEADERS: Final = ("traceparent", "tracestate")
# OpenTelemetry keeps at most 128 links a span; a batch links that many of its records' traces.
MAX_LINKS: Final = 128


@dataclass(frozen=True)
class Telemetry:
    """A process's tracer provider and metrics, ready to hand to the Kafka broker."""

    service_name: str
    tracer_provider: TracerProvider
    registry: CollectorRegistry
    metrics: Metrics
    # Spans are exported somewhere; without that, nothing on a per-record path traces at all.
    tracing: bool = False

    def kafka_middlewares(self) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """Tracing outermost (its span covers everything), then Kafka transport metrics."""
        metrics = KafkaPrometheusMiddleware(
            registry=self.registry, app_name=self.service_name, metrics_prefix=FASTSTREAM_METRICS_PREFIX
        )
        if not self.tracing:
            return (metrics,)
        return (_single_record_tracing(self.tracer_provider), metrics)

    def batch_tracer(self) -> trace.Tracer | None:
        """The tracer of batch subscribers and senders (:mod:`services.common.kafka`); None when
        tracing is off, so that those paths skip it with one test per batch."""
        return self.tracer("duplex.kafka") if self.tracing else None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer for hand-made spans (Salesforce calls, database work)."""
        return self.tracer_provider.get_tracer(name)

    def shutdown(self) -> None:
        """Flush and stop span export (call once, on the way out)."""
        self.tracer_provider.shutdown()


def setup_telemetry(
    settings: TelemetrySettings,
    *,
    service_name: str,
    span_exporter: SpanExporter | None = None,
    batch_export: bool = True,
    install_global: bool = True,
    registry: CollectorRegistry | None = None,
) -> Telemetry:
    """Create the process's telemetry.

    ``install_global`` makes the provider the process-wide default (``trace.get_tracer``);
    OpenTelemetry allows that once per process, so tests pass False.
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporter = span_exporter or _otlp_exporter(settings.otlp_endpoint)
    if exporter is not None:
        processor = BatchSpanProcessor(exporter) if batch_export else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        # Without an exporter the global provider stays OpenTelemetry's no-op one: a span nobody
        # exports would still cost its ids, attributes and context switches on every call.
        if install_global:
            trace.set_tracer_provider(provider)
    registry = registry or CollectorRegistry()
    return Telemetry(service_name, provider, registry, Metrics(registry), tracing=exporter is not None)


def tracing_enabled() -> bool:
    """Whether this process installed an exporting tracer provider (:func:`setup_telemetry` with an
    exporter). Resources that trace at a cost even when spans go nowhere (PostgreSQL statements)
    ask this once when they are set up."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def record_context(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    """The trace context a Kafka record carries in its headers, or None when it carries none."""
    carrier = {name: value.decode("latin-1") for name, value in headers or () if name in TRACE_HEADERS}
    if "traceparent" not in carrier:
        return None
    extracted = propagate.extract(carrier)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


@contextmanager
def batch_span(
    tracer: trace.Tracer,
    name: str,
    records: Sequence[Sequence[tuple[str, bytes]] | None],
    *,
    kind: trace.SpanKind = trace.SpanKind.CONSUMER,
    attributes: dict[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """One current span for work done on a batch of Kafka records (each given by its headers).

    The span continues the first record's trace (a batch of one, the usual case at low load, is
    then exactly that change's trace) and links every record's trace, so a change handled in a
    larger batch still leads to it. What the work publishes continues this span's trace.
    """
    parent: Context | None = None
    links: list[trace.Link] = []
    seen: set[int] = set()
    for headers in records:
        found = record_context(headers)
        if found is None:
            continue
        span_context = trace.get_current_span(found).get_span_context()
        if parent is None:
            parent = found
        if span_context.span_id not in seen and len(links) < MAX_LINKS:
            seen.add(span_context.span_id)
            links.append(trace.Link(span_context))
    with tracer.start_as_current_span(
        name, context=parent or Context(), kind=kind, links=links, attributes=attributes
    ) as span:
        yield span


@contextmanager
def client_span(tracer: trace.Tracer, name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    """A span around one call to another system (Salesforce, the governor), current for its block.

    A failure marks it with the exception's type only: messages can quote what was sent (a
    query, a field's value), which a trace must never hold.
    """
    with tracer.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def _single_record_tracing(provider: TracerProvider) -> BrokerMiddleware[Any, Any]:
    """faststream's Kafka tracing for single-record subscribers and publishers. Batches are left
    out: faststream would start a new trace for each (linking its records only when they carry a
    correlation id); :func:`batch_span` continues theirs instead."""

    def settings(message: Any) -> KafkaTelemetrySettingsProvider | None:
        return None if isinstance(message, Sequence) else KafkaTelemetrySettingsProvider()

    middleware: BrokerMiddleware[Any, Any] = TelemetryMiddleware(
        settings_provider_factory=settings, tracer_provider=provider, include_messages_counters=True
    )
    return middleware


def _otlp_exporter(endpoint: str | None) -> SpanExporter | None:
    # http:// is plaintext (a collector beside the pod), https:// TLS.
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else None

"""Tracing and metrics set-up for one service process.

Traces: one OpenTelemetry ``TracerProvider`` per process, its resource naming the service
(``service.name``). faststream's ``KafkaTelemetryMiddleware`` writes the W3C ``traceparent``
(and baggage) into the headers of every record a service publishes and continues that trace when
a service consumes it, so one change can be followed from cdc-ingest to the writer. Spans leave
the process through the exporter given (tests: in memory) or, when ``TELEMETRY_OTLP_ENDPOINT``
is set, through OTLP over gRPC. Every JSON log line written inside a span carries its ``trace_id``
and ``span_id`` (:mod:`services.common.logging`).

Metrics: one ``prometheus_client`` registry per process holding :class:`Metrics` and
faststream's Kafka Prometheus middleware; served on ``TELEMETRY_METRICS_PORT`` when > 0, beside the
health probes (:mod:`services.common.probes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry

from services.common.metrics import FASTSTREAM_METRICS_PREFIX, Metrics
from services.common.settings import TelemetrySettings

if TYPE_CHECKING:
    from faststream._internal.types import BrokerMiddleware


@dataclass(frozen=True)
class Telemetry:
    """A process's tracer provider and metrics, ready to hand to the Kafka broker."""

    service_name: str
    tracer_provider: TracerProvider
    registry: CollectorRegistry
    metrics: Metrics

    def kafka_middlewares(self) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """Tracing outermost (its span covers everything), then Kafka transport metrics."""
        return (
            KafkaTelemetryMiddleware(tracer_provider=self.tracer_provider),
            KafkaPrometheusMiddleware(
                registry=self.registry, app_name=self.service_name, metrics_prefix=FASTSTREAM_METRICS_PREFIX
            ),
        )

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
    if install_global:
        trace.set_tracer_provider(provider)
    registry = registry or CollectorRegistry()
    return Telemetry(service_name, provider, registry, Metrics(registry))


def _otlp_exporter(endpoint: str | None) -> SpanExporter | None:
    # http:// is plaintext (a collector beside the pod), https:// TLS.
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else None

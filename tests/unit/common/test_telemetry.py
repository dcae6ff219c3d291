"""Traces follow one change across services; metrics are declared once and exported."""

from __future__ import annotations

import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from faststream.kafka import TestKafkaBroker
from faststream.params import NoCast
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from services.common.codec import link_key, record_key
from services.common.kafka import AFTER_EFFECTS, ServiceKafka, make_kafka
from services.common.metrics import METRIC_NAMES, Metrics
from services.common.probes import Probes
from services.common.settings import KafkaSettings, TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.unit

RecordChanged = record_changed_pb2.RecordChanged
ChangeMapped = change_mapped_pb2.ChangeMapped
NAMES = TopicNames(load_topic_table(), prefix="tel.")
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9")


async def test_one_change_is_one_trace_across_two_services() -> None:
    exporter = InMemorySpanExporter()

    def service(name: str) -> ServiceKafka:
        telemetry = setup_telemetry(
            TelemetrySettings(), service_name=name, span_exporter=exporter, batch_export=False, install_global=False
        )
        return make_kafka(SETTINGS, service_name=name, topic_names=NAMES, telemetry=telemetry)

    mapping, resolver = service("mapping"), service("conflict-resolver")
    mapped_out = mapping.publisher(Topic.MAPPED_CHANGES)
    seen: list[str] = []

    @mapping.subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def map_change(event: NoCast[RecordChanged]) -> None:
        mapped = ChangeMapped(event_id="m-" + event.event_id, tenant_id=event.tenant_id, link_id="lnk-1")
        await mapped_out.publish(mapped, key=link_key(event.tenant_id, "lnk-1"))

    @resolver.subscriber(Topic.MAPPED_CHANGES, message_type=ChangeMapped, ack_policy=AFTER_EFFECTS)
    async def resolve(event: NoCast[ChangeMapped]) -> None:
        seen.append(event.event_id)

    async with TestKafkaBroker(mapping.broker, resolver.broker) as (crm_side, _):
        await crm_side.publish(
            RecordChanged(event_id="e1", tenant_id="acme"),
            NAMES(Topic.CRM_CHANGES),
            key=record_key("acme", "Account", "001"),
        )

    assert seen == ["m-e1"]
    spans = exporter.get_finished_spans()
    services = {span.resource.attributes["service.name"] for span in spans}
    assert services == {"mapping", "conflict-resolver"}
    assert len({span.context.trace_id for span in spans}) == 1
    consumed = [s for s in spans if s.name.endswith(" process")]
    assert {s.resource.attributes["service.name"] for s in consumed} == {"mapping", "conflict-resolver"}


def test_metric_names_are_declared_once_and_all_exported() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    exported = {metric.name for metric in registry.collect()}
    # prometheus_client reports counters without their _total suffix.
    assert {name.removesuffix("_total") for name in METRIC_NAMES} == exported
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert all(name.startswith("duplex_") for name in METRIC_NAMES)


def test_the_metrics_endpoint_serves_the_registry() -> None:
    telemetry = setup_telemetry(TelemetrySettings(), service_name="writer", install_global=False)
    telemetry.metrics.api_budget_remaining.labels(tenant="acme").set(4200)
    telemetry.metrics.conflicts_decided.labels(tenant="acme", policy="newest_wins", winner="crm").inc()
    with TestClient(Probes(telemetry.registry).app()) as client:
        body = client.get("/metrics").text
    assert 'duplex_api_budget_remaining{tenant="acme"} 4200.0' in body
    assert 'duplex_conflicts_decided_total{policy="newest_wins",tenant="acme",winner="crm"} 1.0' in body


def test_service_name_is_on_the_resource() -> None:
    telemetry = setup_telemetry(TelemetrySettings(), service_name="cdc-ingest", install_global=False)
    assert telemetry.tracer_provider.resource.attributes["service.name"] == "cdc-ingest"
    telemetry.shutdown()

"""What a span may say (templates, statement summaries), how a batch's span continues its records'
traces, and that a process without an exporter does not trace at all."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.db import statement_summary
from services.common.salesforce import path_template
from services.common.settings import TelemetrySettings
from services.common.telemetry import batch_span, record_context, setup_telemetry, tracing_enabled
from tests.fixtures.tracing import global_tracing

pytestmark = pytest.mark.unit

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"


def headers(trace_id: str, span_id: str) -> list[tuple[str, bytes]]:
    return [("content-type", b"application/x-protobuf"), ("traceparent", f"00-{trace_id}-{span_id}-01".encode())]


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/services/data/v62.0/sobjects/Account/001xx000003DGb2AAG", "/services/data/v62.0/sobjects/Account/{id}"),
        (
            "/services/data/v62.0/sobjects/Account/Duplex_Id__c/p-4411",
            "/services/data/v62.0/sobjects/Account/Duplex_Id__c/{id}",
        ),
        ("/services/data/v62.0/query?q=SELECT+Id+FROM+Account+WHERE+Name='Acme'", "/services/data/v62.0/query"),
        ("/services/data/v62.0/query/01gxx0000002AbC-2000", "/services/data/v62.0/query/{id}"),
        ("/services/data/v62.0/composite/sobjects?allOrNone=false", "/services/data/v62.0/composite/sobjects"),
        ("/services/data/v62.0/jobs/ingest/750xx000000001/batches", "/services/data/v62.0/jobs/ingest/{id}/batches"),
        ("/services/data/v62.0/sobjects/Partner__c/describe", "/services/data/v62.0/sobjects/Partner__c/describe"),
        ("/services/oauth2/userinfo", "/services/oauth2/userinfo"),
    ],
)
def test_a_path_template_keeps_api_words_and_drops_ids_values_and_queries(path: str, template: str) -> None:
    assert path_template(path) == template


@pytest.mark.parametrize(
    ("query", "summary"),
    [
        ("SELECT link_id FROM links WHERE tenant_id = $1", ("SELECT", "links")),
        ("  insert into sync_log (tenant_id, message) values ($1, 'secret')", ("INSERT", "sync_log")),
        ("UPDATE link_states SET version = $2 WHERE link_id = $1", ("UPDATE", "link_states")),
        ("DELETE FROM held_references WHERE tenant_id = $1", ("DELETE", "held_references")),
        ("WITH x AS (SELECT 1) SELECT * FROM x", ("WITH", "x")),
        ("SELECT 1", ("SELECT", None)),
        ("BEGIN;", ("BEGIN", None)),
    ],
)
def test_a_statement_is_summed_up_by_its_keyword_and_first_table_only(
    query: str, summary: tuple[str, str | None]
) -> None:
    assert statement_summary(query) == summary


def test_a_batch_span_continues_the_first_records_trace_and_links_every_record() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", span_exporter=exporter, batch_export=False, install_global=False
    )
    records = [None, headers(TRACE_A, "00f067aa0ba902b7"), [("key", b"v")], headers(TRACE_B, "b7ad6b7169203331")]

    with batch_span(telemetry.tracer("test"), "changes process", records) as span:
        inner = trace.get_current_span()

    [finished] = exporter.get_finished_spans()
    assert inner is span
    assert format(finished.context.trace_id, "032x") == TRACE_A
    assert finished.parent is not None
    assert format(finished.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert [format(link.context.trace_id, "032x") for link in finished.links] == [TRACE_A, TRACE_B]


def test_a_batch_of_records_without_trace_context_starts_a_trace_of_its_own() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", span_exporter=exporter, batch_export=False, install_global=False
    )
    outer = telemetry.tracer("test").start_span("unrelated")
    with trace.use_span(outer), batch_span(telemetry.tracer("test"), "changes process", [None, []]):
        pass
    outer.end()

    batch = next(s for s in exporter.get_finished_spans() if s.name == "changes process")
    assert batch.parent is None
    assert batch.context.trace_id != outer.get_span_context().trace_id
    assert record_context([("traceparent", b"not a traceparent")]) is None


def test_without_an_exporter_nothing_traces() -> None:
    telemetry = setup_telemetry(TelemetrySettings(), service_name="writer")

    assert not telemetry.tracing
    assert telemetry.batch_tracer() is None
    assert not tracing_enabled()
    # The Prometheus middleware only: no tracing middleware touches a record.
    assert [type(m).__name__ for m in telemetry.kafka_middlewares()] == ["KafkaPrometheusMiddleware"]
    span = trace.get_tracer("test").start_span("nothing")
    assert not span.get_span_context().is_valid


def test_with_an_exporter_the_process_traces() -> None:
    with global_tracing("writer") as (telemetry, _):
        assert telemetry.tracing
        assert telemetry.batch_tracer() is not None
        assert tracing_enabled()
        assert [type(m).__name__ for m in telemetry.kafka_middlewares()] == [
            "TelemetryMiddleware",
            "KafkaPrometheusMiddleware",
        ]
    assert not tracing_enabled()

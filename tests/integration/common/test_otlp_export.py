"""Traces leave a service through OTLP (TELEMETRY_OTLP_ENDPOINT) to a real gRPC receiver, and the JSON
log lines written inside a span carry its trace and span ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.common.logging import JsonFormatter
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver, as a collector would be: keeps every export request."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(  # noqa: N802 (the gRPC method's name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    # A thread-pool server: the exporter is synchronous and sends from the thread that ends a span.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    found = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield found, port
    finally:
        server.stop(None)


def test_spans_reach_the_collector_and_log_lines_name_them(receiver: tuple[Receiver, int]) -> None:
    found, port = receiver
    settings = TelemetrySettings(otlp_endpoint=f"http://127.0.0.1:{port}")
    telemetry = setup_telemetry(settings, service_name="writer", install_global=False, batch_export=False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="writer"))
    logger = logging.getLogger("test.otlp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with telemetry.tracer("test").start_as_current_span("salesforce.composite") as span:
            logger.info("writing a batch")
            context = span.get_span_context()
        logger.info("outside any span")
    finally:
        logger.removeHandler(handler)
        telemetry.shutdown()

    spans = [
        (resource.resource, s)
        for request in found.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for s in scope.spans
    ]
    assert [s.name for _, s in spans] == ["salesforce.composite"]
    resource, exported = spans[0]
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "writer"
    assert exported.trace_id.hex() == format(context.trace_id, "032x")

    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["trace_id"], inside["span_id"]) == (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
    )
    assert "trace_id" not in outside

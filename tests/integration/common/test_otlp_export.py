"""Traces leave a service through OTLP (TELEMETRY_OTLP_ENDPOINT) to a real gRPC receiver, and the JSON
log lines written inside a span carry its trace and span ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from services.common.logging import JsonFormatter
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from tests.fixtures.otlp import Receiver, otlp_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    with otlp_receiver() as running:
        yield running


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

    (exported,) = found.spans()
    assert (exported.name, exported.service) == ("salesforce.composite", "writer")
    assert exported.trace_id == format(context.trace_id, "032x")

    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["trace_id"], inside["span_id"]) == (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
    )
    assert "trace_id" not in outside

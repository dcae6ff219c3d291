"""Each Pub/Sub response with events is one span, a trace of its own, current while the caller
handles the batch; keepalives are not traced, and a batch left unhandled ends its span as failed."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import pytest
from eventbus.v1 import pubsub_api_pb2 as pb
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from services.cdc_ingest.pubsub import Start
from tests.fixtures.tracing import global_tracing
from tests.unit.cdc_ingest.test_pubsub_flow import BATCH, TOPIC, ScriptedChannel, event, response

pytestmark = pytest.mark.unit


async def test_a_batch_is_one_span_current_while_the_caller_handles_it() -> None:
    channel = ScriptedChannel(
        [response(event(1), event(2), pending=3), response(pending=3, latest=2), response(event(3), pending=0)]
    )
    with global_tracing("cdc-ingest") as (_, exporter):
        caller = trace.get_tracer("test").start_span("the worker")
        with trace.use_span(caller, end_on_exit=True):
            stream = cast(
                AsyncGenerator[pb.FetchResponse],
                channel.client().subscribe(TOPIC, Start.earliest(), batch=BATCH, idle_timeout=5),
            )
            try:
                await anext(stream)
                first = trace.get_current_span()
                await anext(stream)  # a keepalive
                during_keepalive = trace.get_current_span()
                await anext(stream)
                second = trace.get_current_span()
            finally:
                await stream.aclose()
            after = trace.get_current_span()
        spans = exporter.get_finished_spans()

    batches = [s for s in spans if s.name == "eventbus.v1.PubSub/Subscribe receive"]
    assert [(s.attributes or {}).get("messaging.batch.message_count") for s in batches] == [2, 1]
    assert [s.context.span_id for s in batches] == [
        first.get_span_context().span_id,
        second.get_span_context().span_id,
    ]
    assert during_keepalive is caller
    assert after is caller
    # Each batch starts a trace: not the worker's, not the previous batch's.
    assert all(s.parent is None for s in batches)
    assert len({s.context.trace_id for s in [*batches, *[s for s in spans if s.name == "the worker"]]}) == 3
    # Left while the caller was handling it (the stream closed under it): marked as failed.
    assert batches[1].status.status_code is StatusCode.ERROR
    assert batches[0].status.status_code is StatusCode.UNSET

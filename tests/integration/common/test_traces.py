"""Spans of the real edges, against the real emulator, governor, PostgreSQL and broker: what each
span says (and never says), and that one trace runs through a Salesforce call, the governor's grant
and its PostgreSQL statements, and from a Kafka record through a batch to the records it sends."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.emulator import EmulatorProcess
from services.common.errors import InvalidEvent
from services.common.salesforce import SalesforceApiError, UnlimitedBudget
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import Topic, TopicNames
from tests.fixtures.telemetry import local_telemetry
from tests.fixtures.tracing import global_tracing
from tests.integration.common.test_governor_client import database, governed
from tests.integration.common.test_kafka_delivery import KEY, change, producer, read_topic, service
from tests.integration.common.test_salesforce_client import client
from tests.integration.mapping.test_batch_delivery import run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

__all__ = ["database"]  # a fixture, used by name

RecordChanged = record_changed_pb2.RecordChanged
ChangeMapped = change_mapped_pb2.ChangeMapped
TRACE_A = "0af7651916cd43dd8448eb211c80319c"
SPAN_A = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_A}-{SPAN_A}-01"


@pytest.fixture
async def http(emulator: EmulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=emulator.ca_cert), timeout=30) as client:
        yield client


def said(spans: Sequence[ReadableSpan]) -> list[str]:
    """Everything the spans say: names and attribute values."""
    return [text for s in spans for text in (s.name, *(str(v) for v in (s.attributes or {}).values()))]


def attributes(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


async def test_salesforce_calls_are_spans_named_by_template_with_status_and_error_code(
    emulator: EmulatorProcess, http: httpx.AsyncClient
) -> None:
    with global_tracing("writer") as (_, exporter):
        sf = client(emulator, http, UnlimitedBudget())
        created = await sf.request("POST", f"{sf.api_base}/sobjects/Account", json={"Name": "Traced Corp 7731"})
        record_id = created.json()["id"]
        await sf.request("GET", f"{sf.api_base}/query", params={"q": "SELECT Id FROM Account WHERE Name = 'Traced'"})
        with pytest.raises(SalesforceApiError):
            await sf.request("GET", f"{sf.api_base}/sobjects/Account/001000000000000AAA")
        token = (await sf.session()).access_token
        spans = exporter.get_finished_spans()

    by_name = {s.name: s for s in spans}
    sign_in = by_name["POST /services/oauth2/token"]
    assert attributes(sign_in)["oauth.grant_type"] == "password"
    assert attributes(sign_in)["http.response.status_code"] == 200
    create = by_name["POST /services/data/v62.0/sobjects/Account"]
    assert attributes(create)["http.response.status_code"] == 201
    assert attributes(create)["duplex.tenant_id"] == "acme"
    assert attributes(by_name["GET /services/data/v62.0/query"])["salesforce.api"] == "rest"
    missing = by_name["GET /services/data/v62.0/sobjects/Account/{id}"]
    assert attributes(missing)["http.response.status_code"] == 404
    assert attributes(missing)["salesforce.error_code"] == "NOT_FOUND"
    assert missing.status.status_code is trace.StatusCode.ERROR
    secrets = [token, emulator.info["client_secret"], emulator.info["password"], "Traced", record_id]
    assert [text for text in said(spans) if any(secret in text for secret in secrets)] == []


async def test_a_grant_is_one_trace_from_the_caller_through_the_governor_to_its_statements(database: str) -> None:
    with global_tracing("writer") as (_, exporter):
        async with governed(database) as budget:
            with trace.get_tracer("test").start_as_current_span("a write") as caller:
                await budget.acquire("steady", 1)
        spans = exporter.get_finished_spans()

    trace_id = caller.get_span_context().trace_id
    name = "duplex.governor.v1.RateLimitGovernorService/AcquireCalls"
    [client_span] = [s for s in spans if s.name == name and s.kind is trace.SpanKind.CLIENT]
    [server_span] = [s for s in spans if s.name == name and s.kind is trace.SpanKind.SERVER]
    assert client_span.parent is not None
    assert client_span.parent.span_id == caller.get_span_context().span_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    statements = [s for s in spans if attributes(s).get("db.system") == "postgresql"]
    assert statements, [s.name for s in spans]
    assert {s.context.trace_id for s in (client_span, server_span, *statements)} == {trace_id}
    assert all(s.parent is not None and s.parent.span_id == server_span.context.span_id for s in statements)
    assert any(s.name.startswith("SELECT ") or s.name.startswith("UPDATE ") for s in statements)
    # Statement spans name a keyword and a table; never the parameters (the tenant's id here).
    assert [text for s in statements for text in said([s]) if "steady" in text] == []


async def test_a_batch_continues_its_records_trace_into_what_it_sends(
    kafka_bootstrap: str, topic_names: TopicNames
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        TelemetrySettings(), service_name="mapping", span_exporter=exporter, batch_export=False, install_global=False
    )
    kafka = service(kafka_bootstrap, topic_names, telemetry=telemetry)
    sender = kafka.sender(Topic.MAPPED_CHANGES)
    handled: list[str] = []

    async def handle(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        await sender.publish_all([(ChangeMapped(event_id=e.event_id, tenant_id="acme"), KEY) for e in events])
        handled.extend(e.event_id for e in events)
        return {}

    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=handle)
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(
            change(0), topic_names(Topic.CRM_CHANGES), key=KEY, partition=0, headers={"traceparent": TRACEPARENT}
        )
    await run(kafka, lambda: handled == ["evt-0"])

    [batch] = [s for s in exporter.get_finished_spans() if s.name.endswith("crm-changes.v1 process")]
    assert format(batch.context.trace_id, "032x") == TRACE_A
    assert batch.parent is not None
    assert format(batch.parent.span_id, "016x") == SPAN_A
    assert attributes(batch)["messaging.batch.message_count"] == 1
    [sent] = await read_topic(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES), partition_count=12, at_least=1)
    assert dict(sent.headers)["traceparent"].decode() == f"00-{TRACE_A}-{format(batch.context.span_id, '016x')}-01"


async def test_without_tracing_a_batch_sends_no_trace_context(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    kafka = service(kafka_bootstrap, topic_names, telemetry=local_telemetry("mapping"))
    sender = kafka.sender(Topic.MAPPED_CHANGES)
    handled: list[str] = []

    async def handle(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        # Even inside a span of someone else's: with tracing off, nothing is propagated.
        with trace.get_tracer("test").start_as_current_span("outer"):
            await sender.publish_all([(ChangeMapped(event_id=e.event_id, tenant_id="acme"), KEY) for e in events])
        handled.extend(e.event_id for e in events)
        return {}

    assert kafka.tracer is None
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=handle)
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(
            change(0),
            topic_names(Topic.CRM_CHANGES),
            key=KEY,
            partition=0,
            headers={"traceparent": f"00-{TRACE_A}-{SPAN_A}-01"},
        )
    await run(kafka, lambda: handled == ["evt-0"])

    [sent] = await read_topic(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES), partition_count=12, at_least=1)
    assert "traceparent" not in dict(sent.headers)

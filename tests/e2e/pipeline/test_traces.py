"""One change, one trace, through the real service processes (issue #20).

Every service exports its spans over OTLP to a receiver in this test. An app edit must give one
trace holding mapping's, the conflict-resolver's and the writer's spans, among them the writer's
Salesforce call and PostgreSQL statements; a Salesforce edit must give one trace from cdc-ingest's
Pub/Sub batch through mapping and the resolver to the app-updates record the app is sent (its
``traceparent`` names that trace). No span attribute may hold a secret or an edited value.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.common.topics import Topic, TopicNames
from tests.e2e.pipeline.harness import SERVICE_NAMES, Run, TenantSpec, read_topic, running, synced
from tests.fixtures.otlp import ReceivedSpan, Receiver, otlp_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CAP = 5_000
WITHIN = 120.0


@pytest.fixture
def otlp() -> Iterator[tuple[Receiver, int]]:
    with otlp_receiver() as found:
        yield found


def _overrides(port: int) -> dict[str, dict[str, str]]:
    # A short export delay: spans reach the receiver within a fraction of a second.
    tracing = {"TELEMETRY_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    overrides = {name: dict(tracing) for name in SERVICE_NAMES}
    # The harness's own settings of these services, which an override replaces.
    overrides["rate-limit-governor"] |= {"GOVERNOR_BURST": "2000", "GOVERNOR_CONFIG_TTL_SECONDS": "1"}
    return overrides


async def _trace(
    receiver: Receiver,
    since_ns: int,
    starts: Callable[[ReceivedSpan], bool],
    done: Callable[[list[ReceivedSpan]], bool],
) -> list[ReceivedSpan]:
    """The spans of the one trace that has a span ``starts`` accepts (begun after ``since_ns``),
    once ``done`` holds of them."""
    deadline = time.monotonic() + WITHIN
    while True:
        spans = [s for s in receiver.spans() if s.start_ns >= since_ns]
        traces = {s.trace_id for s in spans if starts(s)}
        assert len(traces) <= 1, f"one change made {len(traces)} traces: {sorted(traces)}"
        found = [s for s in spans if s.trace_id in traces]
        if traces and done(found):
            return found
        assert time.monotonic() < deadline, _describe(found or spans)
        await asyncio.sleep(0.5)


def _describe(spans: list[ReceivedSpan]) -> str:
    return "\n".join(sorted(f"{s.trace_id[:8]} {s.service}: {s.name}" for s in spans)) or "no spans"


def _services(spans: list[ReceivedSpan]) -> set[str]:
    return {s.service for s in spans}


def _salesforce_calls(spans: list[ReceivedSpan], service: str) -> list[ReceivedSpan]:
    return [
        s
        for s in spans
        if s.service == service and str(s.attributes.get("url.template", "")).startswith("/services/data/")
    ]


def _statements(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get("db.system") == "postgresql"]


def _leaks(spans: list[ReceivedSpan], values: list[str]) -> list[str]:
    """Span names and attributes holding a secret, an edited value, a token or query text."""
    # A statement's span is named "SELECT links"; query text would say what it selects FROM.
    forbidden = [*values, "Bearer", " FROM ", "q="]
    return [
        f"{s.service} {s.name}: {key}={value!r}"
        for s in spans
        for key, value in [("name", s.name), *s.attributes.items()]
        if any(text in str(value) for text in forbidden)
    ]


async def _app_update_trace_ids(run: Run) -> set[str]:
    records = await read_topic(run, Topic.APP_UPDATES)
    return {dict(r.headers)["traceparent"].decode().split("-")[1] for r in records if "traceparent" in dict(r.headers)}


async def test_one_change_is_one_trace_from_either_side_to_the_other(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
    otlp: tuple[Receiver, int],
) -> None:
    receiver, port = otlp
    specs = [TenantSpec("alpha", "org-traces", CAP)]
    async with running(
        emulator,
        kafka_server,
        postgres_server,
        topic_names,
        fresh_database,
        tmp_path,
        specs,
        overrides=_overrides(port),
    ) as run:
        await synced(run, 1)
        tenant = run.tenants[0]
        record = next(r for r in tenant.records if r.origin == "app")
        assert record.app_id is not None
        assert record.crm_id is not None
        secrets = ["org-alpha-secret", "org-alpha-password", await tenant.crm._login()]

        # An app edit: mapping, the resolver and the writer, down to the Salesforce write.
        app_value = f"app-{uuid.uuid4().hex[:8]}"
        since = time.time_ns()
        await tenant.app.update(record.app_id, {"notes": app_value})
        app_changes = f"{topic_names(Topic.APP_CHANGES)} process"

        def written(spans: list[ReceivedSpan]) -> bool:
            return {"mapping", "conflict-resolver", "writer"} <= _services(spans) and any(
                s.attributes.get("http.request.method") in ("PATCH", "POST") for s in _salesforce_calls(spans, "writer")
            )

        to_crm = await _trace(receiver, since, lambda s: s.service == "mapping" and s.name == app_changes, written)
        assert _statements(to_crm), _describe(to_crm)
        assert "rate-limit-governor" in _services(to_crm), _describe(to_crm)
        assert _leaks(to_crm, [*secrets, app_value]) == []

        # A Salesforce edit: cdc-ingest's Pub/Sub batch, mapping, the resolver, the app's update.
        crm_value = f"crm-{uuid.uuid4().hex[:8]}"
        since = time.time_ns()
        await tenant.crm.update(record.crm_id, {tenant.fields["notes"]: crm_value})

        def decided(spans: list[ReceivedSpan]) -> bool:
            return {"cdc-ingest", "mapping", "conflict-resolver"} <= _services(spans)

        to_app = await _trace(
            receiver,
            since,
            lambda s: s.service == "cdc-ingest" and s.name == "eventbus.v1.PubSub/Subscribe receive",
            decided,
        )
        assert _statements(to_app), _describe(to_app)
        assert to_app[0].trace_id in await _app_update_trace_ids(run), _describe(to_app)
        assert _leaks(to_app, [*secrets, crm_value]) == []

"""cdc-ingest's reconnect path: the stream dropped by the server, and a subscription refused for an
expired token.

Against the emulator's fault endpoints (``streams/drop``, ``tokens/expire``) with real Kafka and
PostgreSQL: the next change still arrives and ``duplex_cdc_reconnects_total`` counts the reconnect
under the right reason. (The same paths against a scripted channel: tests/unit/cdc_ingest/test_pubsub_flow.py.)
"""

from __future__ import annotations

import uuid

import pytest
from duplex.change.v1 import record_changed_pb2
from prometheus_client import CollectorRegistry

from devstack.emulator import EmulatorProcess
from services.common.settings import TelemetrySettings
from services.common.telemetry import setup_telemetry
from services.common.topics import TopicNames
from tests.integration.cdc_ingest.harness import (
    Org,
    change_reader,
    configure_tenant,
    create_org,
    in_thread,
    prepare_database,
    running,
    secrets_for,
    settings,
    tenant_document,
    wait_backfilled,
)

# --- against the emulator ------------------------------------------------------------------------


def reconnects(registry: CollectorRegistry, tenant: str) -> dict[str, float]:
    """duplex_cdc_reconnects_total of ``tenant`` by reason."""
    return {
        sample.labels["reason"]: sample.value
        for metric in registry.collect()
        if metric.name == "duplex_cdc_reconnects"
        for sample in metric.samples
        if sample.name == "duplex_cdc_reconnects_total" and sample.labels["tenant"] == tenant
    }


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {reason: after[reason] - before.get(reason, 0.0) for reason in after if after[reason] != before.get(reason)}


async def create_account(org: Org, name: str) -> str:
    # A new session each time: expiring the org's tokens expires the test's own too.
    record_id: str = (await in_thread(org.salesforce().Account.create, {"Name": name}))["id"]
    return record_id


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_dropped_stream_and_an_expired_token_are_reconnected_and_counted(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    org = create_org(emulator)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    await configure_tenant(fresh_database, tenant_document(tenant, org, ["Account"]))
    config = settings(emulator=emulator, kafka_bootstrap=kafka_bootstrap, topic_names=topic_names, dsn=fresh_database)
    telemetry = setup_telemetry(TelemetrySettings(), service_name="cdc-ingest", install_global=False)
    registry = telemetry.registry

    async with (
        change_reader(kafka_bootstrap, topic_names) as reader,
        running(config, secrets_for(tenant, org), telemetry=telemetry),
    ):
        await wait_backfilled(fresh_database, tenant, 1)
        # Once a change came through, the subscription is open (and the one the faults hit).
        before = await create_account(org, "Before the faults")
        await reader.until(lambda _: bool(reader.of(before)))
        start = reconnects(registry, tenant)

        assert org.admin("POST", "/streams/drop") == {"dropped": 1}
        after_drop = await create_account(org, "After the drop")
        await reader.until(lambda _: bool(reader.of(after_drop)))
        dropped = reconnects(registry, tenant)
        assert increase(start, dropped) == {"unavailable": 1}

        assert org.admin("POST", "/tokens/expire")["expired"] >= 1
        # An open subscription was authenticated when it began and goes on; the expired token is
        # refused when the stream next subscribes, so drop it.
        assert org.admin("POST", "/streams/drop") == {"dropped": 1}
        after_expiry = await create_account(org, "After the expiry")
        await reader.until(lambda _: bool(reader.of(after_expiry)))
        assert increase(dropped, reconnects(registry, tenant)) == {"unavailable": 1, "auth": 1}

    for record_id in (before, after_drop, after_expiry):
        assert [c.kind for c in reader.of(record_id)] == [record_changed_pb2.CHANGE_KIND_CREATE]

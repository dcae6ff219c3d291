"""cdc-ingest's reconnect path: the stream dropped by the server, and a subscription refused for an
expired token.

Against the emulator's fault endpoints (``streams/drop``, ``tokens/expire``) with real Kafka and
PostgreSQL: the next change still arrives and ``duplex_cdc_reconnects_total`` counts the reconnect
under the right reason. (The same paths against a scripted channel: tests/unit/cdc_ingest/test_pubsub_flow.py.)
"""

from __future__ import annotations

import pytest
from duplex.change.v1 import record_changed_pb2
from prometheus_client import CollectorRegistry

from tests.fixtures.telemetry import local_telemetry
from tests.integration.cdc_ingest.harness import Harness, Org, Tenant, in_thread, wait_backfilled

# --- against the emulator ------------------------------------------------------------------------


def reconnects(registry: CollectorRegistry, tenant: Tenant) -> dict[str, float]:
    """duplex_cdc_reconnects_total of ``tenant`` by reason."""
    return {
        sample.labels["reason"]: sample.value
        for metric in registry.collect()
        if metric.name == "duplex_cdc_reconnects"
        for sample in metric.samples
        if sample.name == "duplex_cdc_reconnects_total" and sample.labels["tenant"] == tenant.id
    }


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {reason: after[reason] - before.get(reason, 0.0) for reason in after if after[reason] != before.get(reason)}


async def create_account(org: Org, name: str) -> str:
    # A new session each time: expiring the org's tokens expires the test's own too.
    record_id: str = (await in_thread(org.salesforce().Account.create, {"Name": name}))["id"]
    return record_id


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_dropped_stream_and_an_expired_token_are_reconnected_and_counted(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    telemetry = local_telemetry("cdc-ingest")
    registry = telemetry.registry

    async with cdc.reader() as reader, cdc.running(tenant, telemetry=telemetry):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
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

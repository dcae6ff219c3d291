"""Catch-up when CDC cannot deliver: expired replay ids, GAP and OVERFLOW events, CDC off."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2 as pb
from prometheus_client import CollectorRegistry

from tests.fixtures.telemetry import local_telemetry
from tests.integration.cdc_ingest.harness import Harness, Tenant, in_thread, sync_log, wait_backfilled, wait_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def sample(registry: CollectorRegistry, name: str, tenant: Tenant, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"tenant": tenant.id, **labels})


async def test_purged_replay_is_repaired_by_polling_including_records_sharing_one_modstamp(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    # Pages of 200 make the 1,000 same-timestamp records span five pages: only a tuple cursor
    # gets through them without skipping or looping.
    config = cdc.settings(poll_page_size=200)
    sf = org.salesforce()

    async with cdc.reader() as reader:
        async with cdc.running(tenant, config):
            await wait_backfilled(cdc.dsn, tenant.id, 1)
            kept = (await in_thread(sf.Account.create, {"Name": "Kept"}))["id"]
            doomed = (await in_thread(sf.Account.create, {"Name": "Doomed"}))["id"]
            await reader.until(lambda _: bool(reader.of(kept)) and bool(reader.of(doomed)))
            await wait_checkpoint(cdc.dsn, tenant.id, reader.of(doomed)[0].source_position.replay_id)

        rows = [{"Name": f"Bulk {i:04d}"} for i in range(1000)]
        await in_thread(sf.bulk2.Account.insert, records=rows, wait=0.2)
        await in_thread(sf.Account.update, kept, {"Name": "Kept, renamed"})
        await in_thread(sf.Account.delete, doomed)
        bulk = (await in_thread(sf.query_all, "SELECT Id, SystemModstamp FROM Account WHERE Name LIKE 'Bulk %'"))[
            "records"
        ]
        bulk_ids = {r["Id"] for r in bulk}
        assert len(bulk_ids) == 1000
        assert len({r["SystemModstamp"] for r in bulk}) == 1, "one bulk transaction, one SystemModstamp"
        purged = org.admin("POST", "/events/purge", {"older_than_seconds": 0})
        assert purged["purged"] > 1000

        telemetry = local_telemetry("cdc-ingest")
        async with cdc.running(tenant, config, telemetry=telemetry):
            await reader.until(
                lambda _: (
                    bulk_ids <= {c.record_id for c in reader.changes}
                    and any(c.kind == pb.CHANGE_KIND_DELETE for c in reader.of(doomed))
                    and any(c.fields["Name"].string_value == "Kept, renamed" for c in reader.of(kept))
                ),
                within=60,
            )
            # After the repair the stream has taken over again.
            after = (await in_thread(sf.Account.create, {"Name": "After the repair"}))["id"]
            await reader.until(lambda _: bool(reader.of(after)), within=30)

    assert [c.kind for c in reader.of(after)] == [pb.CHANGE_KIND_CREATE]
    repaired = [c for c in reader.changes if c.record_id in bulk_ids]
    assert {c.kind for c in repaired} == {pb.CHANGE_KIND_SNAPSHOT}
    assert {c.source_position.channel for c in repaired} == {"catch_up:Account"}
    events = [row["event"] for row in await sync_log(cdc.dsn, tenant.id)]
    assert "cdc.replay.expired" in events
    assert "cdc.replay.repaired" in events
    registry = telemetry.registry
    assert sample(registry, "duplex_cdc_reconnects_total", tenant, reason="replay_expired") == 1
    assert sample(registry, "duplex_cdc_gaps_repaired_total", tenant, kind="replay_expired") == 1
    caught_up = sample(registry, "duplex_cdc_events_ingested_total", tenant, source="catch_up")
    assert caught_up is not None
    assert caught_up >= len(bulk_ids) + 2


async def test_gap_and_overflow_events_are_repaired_by_re_reading(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    sf = org.salesforce()
    telemetry = local_telemetry("cdc-ingest")

    async with cdc.reader() as reader, cdc.running(tenant, telemetry=telemetry):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        one = (await in_thread(sf.Account.create, {"Name": "One"}))["id"]
        two = (await in_thread(sf.Account.create, {"Name": "Two"}))["id"]
        gone = (await in_thread(sf.Account.create, {"Name": "Gone"}))["id"]
        await in_thread(sf.Account.delete, gone)
        born = (await in_thread(sf.Account.create, {"Name": "Born"}))["id"]
        back = (await in_thread(sf.Account.create, {"Name": "Back"}))["id"]
        await in_thread(sf.Account.delete, back)
        await in_thread(org.undelete, back)
        await reader.until(
            lambda _: (
                bool(reader.of(one))
                and bool(reader.of(two))
                and len(reader.of(gone)) == 2
                and bool(reader.of(born))
                and len(reader.of(back)) == 3
            )
        )

        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [one, two], "change_type": "GAP_UPDATE"})
        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [gone], "change_type": "GAP_DELETE"})
        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [born], "change_type": "GAP_CREATE"})
        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [back], "change_type": "GAP_UNDELETE"})
        await reader.until(
            lambda _: (
                len(reader.of(one)) == 2
                and len(reader.of(two)) == 2
                and len(reader.of(gone)) == 3
                and len(reader.of(born)) == 2
                and len(reader.of(back)) == 4
            )
        )

        await in_thread(sf.Account.update, two, {"Name": "Two, again"})
        await reader.until(lambda _: len(reader.of(two)) == 3)
        org.admin("POST", "/events/overflow", {"entity": "Account"})
        await reader.until(lambda _: any(c.source_position.channel == "overflow:Account" for c in reader.of(two)))
        # The repair is logged and counted just after its last change is published.
        deadline = time.monotonic() + 10
        while sample(telemetry.registry, "duplex_cdc_gaps_repaired_total", tenant, kind="overflow") is None:
            assert time.monotonic() < deadline, "the overflow repair was never counted"
            await asyncio.sleep(0.1)

    gap_one, gap_two = reader.of(one)[1], reader.of(two)[1]
    assert (gap_one.kind, gap_one.fields["Name"].string_value) == (pb.CHANGE_KIND_SNAPSHOT, "One")
    assert (gap_two.kind, gap_two.fields["Name"].string_value) == (pb.CHANGE_KIND_SNAPSHOT, "Two")
    assert gap_one.source_position.channel == "gap:Account"
    assert reader.of(gone)[2].kind == pb.CHANGE_KIND_DELETE
    gap_born, gap_back = reader.of(born)[1], reader.of(back)[3]
    assert (gap_born.kind, gap_born.fields["Name"].string_value) == (pb.CHANGE_KIND_CREATE, "Born")
    assert (gap_back.kind, gap_back.fields["Name"].string_value) == (pb.CHANGE_KIND_UNDELETE, "Back")
    assert {gap_born.source_position.channel, gap_back.source_position.channel} == {"gap:Account"}
    overflow = [c for c in reader.of(two) if c.source_position.channel == "overflow:Account"]
    assert overflow[-1].fields["Name"].string_value == "Two, again"
    log = await sync_log(cdc.dsn, tenant.id)
    gaps = [row for row in log if row["event"] == "cdc.gap.repaired"]
    assert len(gaps) == 4
    assert set(gaps[0]["detail"]["record_ids"]) == {one, two}
    assert [row["code"] for row in gaps] == ["GAP"] * 4
    # Each repair was announced before it ran.
    repairs = [(row["event"], row["detail"]["replay_id"]) for row in log if row["event"].startswith("cdc.gap.")]
    assert repairs == [
        (event, gap["detail"]["replay_id"]) for gap in gaps for event in ("cdc.gap.detected", "cdc.gap.repaired")
    ]
    overflows = [row["event"] for row in log if row["event"].startswith("cdc.overflow.")]
    assert overflows == ["cdc.overflow.detected", "cdc.overflow.repaired"]

    registry = telemetry.registry
    # one, two, gone (twice), born, back (three times) and two again: nine events from the stream.
    assert sample(registry, "duplex_cdc_events_ingested_total", tenant, source="stream") == 9
    assert sample(registry, "duplex_cdc_events_ingested_total", tenant, source="gap") == 5
    assert (sample(registry, "duplex_cdc_events_ingested_total", tenant, source="overflow") or 0) >= 1
    assert sample(registry, "duplex_cdc_gaps_repaired_total", tenant, kind="gap") == 4
    assert sample(registry, "duplex_cdc_gaps_repaired_total", tenant, kind="overflow") == 1
    lag = sample(registry, "duplex_cdc_lag_seconds", tenant)
    assert lag is not None
    assert 0 <= lag < 60


async def test_a_gap_whose_repair_fails_is_logged_as_detected_and_repaired_once_it_can_be(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    sf = org.salesforce()

    async def events() -> list[str]:
        return [row["event"] for row in await sync_log(cdc.dsn, tenant.id) if row["event"].startswith("cdc.gap.")]

    async with cdc.reader() as reader, cdc.running(tenant):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        one = (await in_thread(sf.Account.create, {"Name": "One"}))["id"]
        await reader.until(lambda _: bool(reader.of(one)))
        # Salesforce's REST API down (Pub/Sub still delivering): the re-read cannot be made.
        org.admin("PATCH", "/faults", {"unavailable_ratio": 1.0})
        try:
            org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [one], "change_type": "GAP_UPDATE"})
            deadline = time.monotonic() + 30
            while "cdc.gap.detected" not in await events():
                assert time.monotonic() < deadline, "the gap was never logged"
                await asyncio.sleep(0.1)
            failed = await events()
        finally:
            org.admin("PATCH", "/faults", {"unavailable_ratio": 0.0})
        await reader.until(lambda _: len(reader.of(one)) == 2, within=60)
        deadline = time.monotonic() + 10
        while "cdc.gap.repaired" not in await events():
            assert time.monotonic() < deadline, "the repair was never logged"
            await asyncio.sleep(0.1)

    assert "cdc.gap.repaired" not in failed
    logged = await events()
    assert logged[-2:] == ["cdc.gap.detected", "cdc.gap.repaired"]
    assert set(logged) == {"cdc.gap.detected", "cdc.gap.repaired"}
    assert reader.of(one)[1].source_position.channel == "gap:Account"


async def test_a_polled_object_keeps_its_first_cursor_so_changes_between_runs_are_found(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Case"], org_objects={"Case": {"cdc_enabled": False}}, poll_seconds=5)
    # No backfill and, on the first run, nothing to read: only the starting point is there to save.
    config = cdc.settings(polled_objects=("Case",), backfill_on_first_connect=False)
    sf = tenant.org.salesforce()

    async def cursor_saved() -> bool:
        connection = await asyncpg.connect(cdc.dsn)
        try:
            found = await connection.fetchval("SELECT count(*) FROM poll_cursors WHERE tenant_id = $1", tenant.id)
        finally:
            await connection.close()
        return bool(found)

    async with cdc.reader() as reader:
        async with cdc.running(tenant, config):
            deadline = time.monotonic() + 30
            while not await cursor_saved():
                assert time.monotonic() < deadline, "no poll cursor saved by the first run"
                await asyncio.sleep(0.1)
        case = (await in_thread(sf.Case.create, {"Subject": "Filed while nobody polled"}))["id"]
        # Longer than the overlap (2 s): a next run starting from its own now() would miss it.
        await asyncio.sleep(3)
        async with cdc.running(tenant, config):
            await reader.until(lambda _: bool(reader.of(case)), within=30)

    (found,) = reader.of(case)
    assert found.kind == pb.CHANGE_KIND_SNAPSHOT
    assert found.source_position.channel == "poll:Case"


async def test_objects_without_cdc_are_polled(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account", "Case"], org_objects={"Case": {"cdc_enabled": False}}, poll_seconds=5)
    sf = tenant.org.salesforce()

    async with cdc.reader() as reader, cdc.running(tenant, cdc.settings(polled_objects=("Case",))):
        await wait_backfilled(cdc.dsn, tenant.id, 2)
        case = (await in_thread(sf.Case.create, {"Subject": "Printer on fire"}))["id"]
        await reader.until(lambda _: bool(reader.of(case)), within=30)
        await in_thread(sf.Case.delete, case)
        await reader.until(lambda _: any(c.kind == pb.CHANGE_KIND_DELETE for c in reader.of(case)), within=30)

    first = reader.of(case)[0]
    assert first.kind == pb.CHANGE_KIND_SNAPSHOT
    assert first.fields["Subject"].string_value == "Printer on fire"
    assert first.source_position.channel == "poll:Case"
    assert first.source_position.cursor.endswith(case)

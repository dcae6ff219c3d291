"""Catch-up when CDC cannot deliver: expired replay ids, GAP and OVERFLOW events, CDC off."""

from __future__ import annotations

import uuid

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from devstack.emulator import EmulatorProcess
from services.common.topics import TopicNames
from tests.integration.cdc_ingest.harness import (
    change_reader,
    configure_tenant,
    create_org,
    in_thread,
    prepare_database,
    running,
    secrets_for,
    settings,
    sync_log,
    tenant_document,
    wait_backfilled,
    wait_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_purged_replay_is_repaired_by_polling_including_records_sharing_one_modstamp(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    org = create_org(emulator)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    await configure_tenant(fresh_database, tenant_document(tenant, org, ["Account"]))
    # Pages of 200 make the 1,000 same-timestamp records span five pages: only a tuple cursor
    # gets through them without skipping or looping.
    config = settings(
        emulator=emulator,
        kafka_bootstrap=kafka_bootstrap,
        topic_names=topic_names,
        dsn=fresh_database,
        poll_page_size=200,
    )
    sf = org.salesforce()

    async with change_reader(kafka_bootstrap, topic_names) as reader:
        async with running(config, secrets_for(tenant, org)):
            await wait_backfilled(fresh_database, tenant, 1)
            kept = (await in_thread(sf.Account.create, {"Name": "Kept"}))["id"]
            doomed = (await in_thread(sf.Account.create, {"Name": "Doomed"}))["id"]
            await reader.until(lambda _: bool(reader.of(kept)) and bool(reader.of(doomed)))
            await wait_checkpoint(fresh_database, tenant, reader.of(doomed)[0].source_position.replay_id)

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

        async with running(config, secrets_for(tenant, org)):
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
    events = [row["event"] for row in await sync_log(fresh_database, tenant)]
    assert "cdc.replay.expired" in events
    assert "cdc.replay.repaired" in events


async def test_gap_and_overflow_events_are_repaired_by_re_reading(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    org = create_org(emulator)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    await configure_tenant(fresh_database, tenant_document(tenant, org, ["Account"]))
    config = settings(emulator=emulator, kafka_bootstrap=kafka_bootstrap, topic_names=topic_names, dsn=fresh_database)
    sf = org.salesforce()

    async with change_reader(kafka_bootstrap, topic_names) as reader, running(config, secrets_for(tenant, org)):
        await wait_backfilled(fresh_database, tenant, 1)
        one = (await in_thread(sf.Account.create, {"Name": "One"}))["id"]
        two = (await in_thread(sf.Account.create, {"Name": "Two"}))["id"]
        gone = (await in_thread(sf.Account.create, {"Name": "Gone"}))["id"]
        await in_thread(sf.Account.delete, gone)
        await reader.until(lambda _: bool(reader.of(one)) and bool(reader.of(two)) and len(reader.of(gone)) == 2)

        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [one, two], "change_type": "GAP_UPDATE"})
        org.admin("POST", "/events/gap", {"entity": "Account", "record_ids": [gone], "change_type": "GAP_DELETE"})
        await reader.until(
            lambda _: len(reader.of(one)) == 2 and len(reader.of(two)) == 2 and len(reader.of(gone)) == 3
        )

        await in_thread(sf.Account.update, two, {"Name": "Two, again"})
        await reader.until(lambda _: len(reader.of(two)) == 3)
        org.admin("POST", "/events/overflow", {"entity": "Account"})
        await reader.until(lambda _: any(c.source_position.channel == "overflow:Account" for c in reader.of(two)))

    gap_one, gap_two = reader.of(one)[1], reader.of(two)[1]
    assert (gap_one.kind, gap_one.fields["Name"].string_value) == (pb.CHANGE_KIND_SNAPSHOT, "One")
    assert (gap_two.kind, gap_two.fields["Name"].string_value) == (pb.CHANGE_KIND_SNAPSHOT, "Two")
    assert gap_one.source_position.channel == "gap:Account"
    assert reader.of(gone)[2].kind == pb.CHANGE_KIND_DELETE
    overflow = [c for c in reader.of(two) if c.source_position.channel == "overflow:Account"]
    assert overflow[-1].fields["Name"].string_value == "Two, again"
    log = await sync_log(fresh_database, tenant)
    gaps = [row for row in log if row["event"] == "cdc.gap.repaired"]
    assert len(gaps) == 2
    assert set(gaps[0]["detail"]["record_ids"]) == {one, two}
    assert any(row["event"] == "cdc.overflow.repaired" for row in log)


async def test_objects_without_cdc_are_polled(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    org = create_org(emulator, objects={"Case": {"cdc_enabled": False}})
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    await configure_tenant(fresh_database, tenant_document(tenant, org, ["Account", "Case"], poll_seconds=5))
    config = settings(
        emulator=emulator,
        kafka_bootstrap=kafka_bootstrap,
        topic_names=topic_names,
        dsn=fresh_database,
        polled_objects=("Case",),
    )
    sf = org.salesforce()

    async with change_reader(kafka_bootstrap, topic_names) as reader, running(config, secrets_for(tenant, org)):
        await wait_backfilled(fresh_database, tenant, 2)
        case = (await in_thread(sf.Case.create, {"Subject": "Printer on fire"}))["id"]
        await reader.until(lambda _: bool(reader.of(case)), within=30)
        await in_thread(sf.Case.delete, case)
        await reader.until(lambda _: any(c.kind == pb.CHANGE_KIND_DELETE for c in reader.of(case)), within=30)

    first = reader.of(case)[0]
    assert first.kind == pb.CHANGE_KIND_SNAPSHOT
    assert first.fields["Subject"].string_value == "Printer on fire"
    assert first.source_position.channel == "poll:Case"
    assert first.source_position.cursor.endswith(case)

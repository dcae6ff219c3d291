"""cdc-ingest against the emulator process, real Kafka and real PostgreSQL: the CDC stream."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.common.change import ChangeKind
from services.common.contract import from_proto
from services.common.values import Reference
from tests.integration.cdc_ingest.harness import CLIENT, Harness, in_thread, wait_backfilled, wait_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_changes_arrive_with_kinds_values_fields_and_origin(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account", "Contact"])
    org = tenant.org
    sf = org.salesforce()

    async with cdc.reader() as reader, cdc.running(tenant) as service:
        assert await service.health.is_ready()
        assert await service.health.is_live()
        await wait_backfilled(cdc.dsn, tenant.id, 2)
        account = (
            await in_thread(
                sf.Account.create,
                {"Name": "Acme", "Phone": "555-0100", "BillingStreet": "1 Main St", "BillingCity": "Springfield"},
            )
        )["id"]
        await in_thread(
            sf.Account.update, account, {"BillingCity": "Shelbyville", "BillingStreet": None, "Phone": None}
        )
        contact = (await in_thread(sf.Contact.create, {"FirstName": "Jane", "LastName": "Doe", "AccountId": account}))[
            "id"
        ]
        await in_thread(sf.Account.delete, account)
        await in_thread(org.undelete, account)

        await reader.until(lambda _: len(reader.of(account)) >= 4 and len(reader.of(contact)) >= 1)
    # Stopped: the pool and the producer are closed.
    assert not await service.health.is_ready()

    create, update, delete, undelete = (from_proto(m) for m in reader.of(account))
    assert create.kind is ChangeKind.CREATE
    assert create.fields["Name"] == "Acme"
    assert create.fields["Phone"] == "555-0100"
    assert create.fields["BillingStreet"] == "1 Main St"
    assert create.fields["BillingCity"] == "Springfield"
    assert create.fields["BillingState"] is None
    assert create.origin_client == CLIENT
    assert abs((datetime.now(UTC) - create.at).total_seconds()) < 60

    assert update.kind is ChangeKind.UPDATE
    assert update.fields["BillingCity"] == "Shelbyville"
    assert update.fields["Phone"] is None
    assert "Name" not in update.fields
    assert {"BillingAddress.City", "BillingCity", "Phone", "LastModifiedDate"} <= update.changed
    assert "Phone" in update.nulled
    # One part of a compound nulled: named both ways, its value null, the other parts untouched.
    assert update.fields["BillingStreet"] is None
    assert {"BillingAddress.Street", "BillingStreet"} <= update.nulled
    assert "BillingAddress" not in update.nulled
    assert not {"BillingCity", "BillingAddress.City"} & update.nulled
    assert "Name" not in update.changed
    assert update.origin_client == CLIENT
    assert update.transaction_key
    assert update.transaction_key != create.transaction_key

    assert delete.kind is ChangeKind.DELETE
    assert not delete.fields

    assert undelete.kind is ChangeKind.UNDELETE
    assert undelete.fields["Name"] == "Acme"
    assert undelete.fields["BillingCity"] == "Shelbyville"
    assert undelete.fields["BillingStreet"] is None
    assert undelete.origin_client == CLIENT

    (contact_create,) = (from_proto(m) for m in reader.of(contact))
    assert contact_create.kind is ChangeKind.CREATE
    assert contact_create.fields["FirstName"] == "Jane"
    assert contact_create.fields["LastName"] == "Doe"
    assert contact_create.fields["AccountId"] == Reference(account)
    for message in reader.of(account) + reader.of(contact):
        assert message.origin_side == pb.SIDE_CRM
        assert message.tenant_id == tenant.id
        assert len(message.source_position.replay_id) == 8
        assert message.source_position.channel == "/data/ChangeEvents"
    assert len({m.event_id for m in reader.changes}) == len(reader.changes)


async def test_restart_resumes_after_the_checkpoint_with_nothing_lost(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    sf = tenant.org.salesforce()

    async with cdc.reader() as reader:
        async with cdc.running(tenant):
            await wait_backfilled(cdc.dsn, tenant.id, 1)
            first = (await in_thread(sf.Account.create, {"Name": "Before the stop"}))["id"]
            await reader.until(lambda _: bool(reader.of(first)))
            await wait_checkpoint(cdc.dsn, tenant.id, reader.of(first)[0].source_position.replay_id)
        # Stopped: these changes happen while nobody listens.
        while_down = [(await in_thread(sf.Account.create, {"Name": f"While down {i}"}))["id"] for i in range(5)]
        await in_thread(sf.Account.update, first, {"Name": "Renamed while down"})
        async with cdc.running(tenant):
            await reader.until(lambda _: all(reader.of(r) for r in while_down) and len(reader.of(first)) >= 2)
            # Checkpoints follow Kafka's acks, so the last one may land just after its event is read.
            await wait_checkpoint(cdc.dsn, tenant.id, reader.of(first)[-1].source_position.replay_id)

    connection = await asyncpg.connect(cdc.dsn)
    try:
        checkpoint = await connection.fetchrow("SELECT * FROM replay_checkpoints WHERE tenant_id = $1", tenant.id)
    finally:
        await connection.close()
    assert checkpoint is not None
    for record_id in while_down:
        assert [m.kind for m in reader.of(record_id)] == [pb.CHANGE_KIND_CREATE]
    kinds = [m.kind for m in reader.of(first)]
    assert kinds == [pb.CHANGE_KIND_CREATE, pb.CHANGE_KIND_UPDATE]
    # Resumed CUSTOM after the checkpoint: the first create was not published again.
    assert reader.of(first)[1].fields["Name"].string_value == "Renamed while down"
    assert int.from_bytes(bytes(checkpoint["replay_id"]), "big") >= int.from_bytes(
        reader.of(first)[-1].source_position.replay_id, "big"
    )


async def test_a_merge_losers_delete_carries_the_master_and_the_masters_update_arrives(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    sf = org.salesforce()

    async with cdc.reader() as reader, cdc.running(tenant):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        master = (await in_thread(sf.Account.create, {"Name": "Acme"}))["id"]
        loser = (await in_thread(sf.Account.create, {"Name": "Acme Inc."}))["id"]
        plain = (await in_thread(sf.Account.create, {"Name": "Deleted the ordinary way"}))["id"]
        await reader.until(lambda _: bool(reader.of(master)) and bool(reader.of(loser)) and bool(reader.of(plain)))
        await in_thread(org.merge, "Account", master, loser)
        await in_thread(sf.Account.delete, plain)
        await reader.until(
            lambda _: (
                any(c.kind == pb.CHANGE_KIND_DELETE for c in reader.of(loser))
                and any(c.kind == pb.CHANGE_KIND_UPDATE for c in reader.of(master))
                and any(c.kind == pb.CHANGE_KIND_DELETE for c in reader.of(plain))
            )
        )

    (deleted,) = (from_proto(c) for c in reader.of(loser) if c.kind == pb.CHANGE_KIND_DELETE)
    assert deleted.fields == {"MasterRecordId": Reference(master)}
    assert deleted.origin_client == CLIENT
    (updated,) = (from_proto(c) for c in reader.of(master) if c.kind == pb.CHANGE_KIND_UPDATE)
    assert updated.origin_client == CLIENT
    (ordinary,) = (from_proto(c) for c in reader.of(plain) if c.kind == pb.CHANGE_KIND_DELETE)
    assert not ordinary.fields


async def test_every_synced_object_is_described_into_postgres_for_mapping_at_start(cdc: Harness) -> None:
    # The formula field of the emulator's seed, in this test's own org.
    formula = {"name": "Is_Key_Account__c", "type": "boolean", "formula": "AnnualRevenue >= 1000000"}
    tenant = await cdc.tenant(
        ["Account", "Case"], org_objects={"Account": {"fields": [formula]}, "Case": {"cdc_enabled": False}}
    )
    # No backfill, and Case polled: only the start-up describe can have written the rows.
    config = cdc.settings(backfill_on_first_connect=False, polled_objects=("Case",))

    async with cdc.running(tenant, config):
        deadline = time.monotonic() + 30
        while True:
            connection = await asyncpg.connect(cdc.dsn)
            try:
                rows = await connection.fetch(
                    "SELECT object_name, fields, described_at FROM crm_object_fields WHERE tenant_id = $1", tenant.id
                )
            finally:
                await connection.close()
            if len(rows) == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    described = {row["object_name"]: json.loads(row["fields"]) for row in rows}
    assert set(described) == {"Account", "Case"}
    account = described["Account"]
    assert account["Name"] == {
        "type": "string",
        "length": 255,
        "precision": 0,
        "scale": 0,
        "digits": 0,
        "createable": True,
        "updateable": True,
        "calculated": False,
        "nillable": False,
    }
    assert {k: account["AnnualRevenue"][k] for k in ("type", "precision", "scale")} == {
        "type": "currency",
        "precision": 18,
        "scale": 0,
    }
    assert account["Is_Key_Account__c"]["calculated"] is True
    assert account["Is_Key_Account__c"]["createable"] is False
    assert account["Is_Key_Account__c"]["updateable"] is False
    assert account["Id"]["updateable"] is False
    assert described["Case"]["Subject"]["type"] == "string"
    assert all(abs((datetime.now(UTC) - row["described_at"]).total_seconds()) < 60 for row in rows)

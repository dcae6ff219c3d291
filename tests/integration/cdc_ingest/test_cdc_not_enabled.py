"""cdc-ingest against the emulator process, real Kafka and real PostgreSQL: objects configured for
streaming whose change events the org does not select for CDC are found at start and polled."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from tests.integration.cdc_ingest.harness import Harness, Tenant, in_thread, sync_log, wait_backfilled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

OBJECTS = ["Account", "Case", "Partner__c", "Ticket__c"]


async def not_enabled_rows(cdc: Harness, tenant: Tenant) -> list[dict[str, Any]]:
    return [row for row in await sync_log(cdc.dsn, tenant.id) if row["event"] == "cdc.not_enabled"]


async def test_objects_without_cdc_in_the_org_are_polled_and_logged_while_the_others_stream(cdc: Harness) -> None:
    # Every object is configured for streaming: nothing is listed as polled.
    tenant = await cdc.tenant(
        OBJECTS,
        org_objects={
            "Case": {"cdc_enabled": False},
            "Partner__c": {"label": "Partner"},
            "Ticket__c": {"label": "Ticket", "cdc_enabled": False},
        },
        poll_seconds=5,
    )
    sf = tenant.org.salesforce()

    async with cdc.reader() as reader:
        async with cdc.running(tenant) as service:
            await wait_backfilled(cdc.dsn, tenant.id, len(OBJECTS))
            worker = service.workers[tenant.id]
            assert worker.objects.streamed == ["Account", "Partner__c"]
            assert worker.objects.polled == ["Case", "Ticket__c"]
            case = (await in_thread(sf.Case.create, {"Subject": "Printer on fire"}))["id"]
            ticket = (await in_thread(sf.Ticket__c.create, {"Name": "T-1"}))["id"]
            account = (await in_thread(sf.Account.create, {"Name": "Streams"}))["id"]
            partner = (await in_thread(sf.Partner__c.create, {"Name": "Also streams"}))["id"]
            await reader.until(lambda _: all(reader.of(i) for i in (case, ticket, account, partner)), within=60)
            # Several polls have run by now: the rows are written at start, not per poll.
            first_start = await not_enabled_rows(cdc, tenant)

        # A second start finds the same and says so again, once per object.
        async with cdc.running(tenant):
            deadline = time.monotonic() + 30
            while len(await not_enabled_rows(cdc, tenant)) < 2 * len(first_start):
                assert time.monotonic() < deadline, await not_enabled_rows(cdc, tenant)
                await asyncio.sleep(0.1)

    (polled_case,) = reader.of(case)
    assert polled_case.kind == pb.CHANGE_KIND_SNAPSHOT
    assert polled_case.source_position.channel == "poll:Case"
    assert polled_case.fields["Subject"].string_value == "Printer on fire"
    (polled_ticket,) = reader.of(ticket)
    assert polled_ticket.source_position.channel == "poll:Ticket__c"
    for streamed in (account, partner):
        (created,) = reader.of(streamed)
        assert created.kind == pb.CHANGE_KIND_CREATE
        assert created.source_position.channel == "/data/ChangeEvents"

    assert [(row["code"], row["detail"]["entity"]) for row in first_start] == [
        ("CDC_NOT_ENABLED", "Case"),
        ("CDC_NOT_ENABLED", "Ticket__c"),
    ]
    case_row, ticket_row = first_start
    assert case_row["service"] == "cdc-ingest"
    assert "Case" in str(case_row["message"])
    assert "polling" in str(case_row["message"])
    assert case_row["detail"]["change_event"] == "CaseChangeEvent"
    assert ticket_row["detail"]["change_event"] == "Ticket__ChangeEvent"
    assert len(await not_enabled_rows(cdc, tenant)) == 4


async def test_without_permission_to_read_the_selection_the_configuration_stands(
    cdc: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # The integration user lacks "View Setup and Configuration": PlatformEventChannelMember is invisible.
    tenant = await cdc.tenant(
        ["Account", "Case"],
        org_objects={"Case": {"cdc_enabled": False}},
        user_options={"view_setup": False},
        poll_seconds=5,
    )
    sf = tenant.org.salesforce()
    caplog.set_level(logging.WARNING, logger="services.cdc_ingest.worker")

    async with cdc.reader() as reader, cdc.running(tenant) as service:
        await wait_backfilled(cdc.dsn, tenant.id, 2)
        account = (await in_thread(sf.Account.create, {"Name": "Still streams"}))["id"]
        await reader.until(lambda _: bool(reader.of(account)), within=30)
        worker = service.workers[tenant.id]
        assert worker.objects.streamed == ["Account", "Case"]
        assert worker.objects.polled == []

    assert reader.of(account)[0].source_position.channel == "/data/ChangeEvents"
    assert await not_enabled_rows(cdc, tenant) == []
    warnings = [
        r for r in caplog.records if r.name == "services.cdc_ingest.worker" and "CDC selection" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING

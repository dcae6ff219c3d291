"""cdc-ingest against the emulator process, real Kafka and real PostgreSQL: objects configured for
streaming whose change events the org does not select for CDC are found at start and polled."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

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
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

OBJECTS = ["Account", "Case", "Partner__c", "Ticket__c"]


async def not_enabled_rows(dsn: str, tenant: str) -> list[dict[str, Any]]:
    return [row for row in await sync_log(dsn, tenant) if row["event"] == "cdc.not_enabled"]


async def test_objects_without_cdc_in_the_org_are_polled_and_logged_while_the_others_stream(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    org = create_org(
        emulator,
        objects={
            "Case": {"cdc_enabled": False},
            "Partner__c": {"label": "Partner"},
            "Ticket__c": {"label": "Ticket", "cdc_enabled": False},
        },
    )
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    # Every object is configured for streaming: nothing is listed as polled.
    await configure_tenant(fresh_database, tenant_document(tenant, org, OBJECTS, poll_seconds=5))
    config = settings(emulator=emulator, kafka_bootstrap=kafka_bootstrap, topic_names=topic_names, dsn=fresh_database)
    sf = org.salesforce()

    async with change_reader(kafka_bootstrap, topic_names) as reader:
        async with running(config, secrets_for(tenant, org)) as service:
            await wait_backfilled(fresh_database, tenant, len(OBJECTS))
            worker = service.state["workers"][tenant]
            assert worker.streamed == ["Account", "Partner__c"]
            assert worker.polled == ["Case", "Ticket__c"]
            case = (await in_thread(sf.Case.create, {"Subject": "Printer on fire"}))["id"]
            ticket = (await in_thread(sf.Ticket__c.create, {"Name": "T-1"}))["id"]
            account = (await in_thread(sf.Account.create, {"Name": "Streams"}))["id"]
            partner = (await in_thread(sf.Partner__c.create, {"Name": "Also streams"}))["id"]
            await reader.until(lambda _: all(reader.of(i) for i in (case, ticket, account, partner)), within=60)
            # Several polls have run by now: the rows are written at start, not per poll.
            first_start = await not_enabled_rows(fresh_database, tenant)

        # A second start finds the same and says so again, once per object.
        async with running(config, secrets_for(tenant, org)):
            deadline = time.monotonic() + 30
            while len(await not_enabled_rows(fresh_database, tenant)) < 2 * len(first_start):
                assert time.monotonic() < deadline, await not_enabled_rows(fresh_database, tenant)
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
    assert len(await not_enabled_rows(fresh_database, tenant)) == 4


async def test_without_permission_to_read_the_selection_the_configuration_stands(
    emulator: EmulatorProcess,
    kafka_bootstrap: str,
    topic_names: TopicNames,
    fresh_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The integration user lacks "View Setup and Configuration": PlatformEventChannelMember is invisible.
    org = create_org(emulator, objects={"Case": {"cdc_enabled": False}}, user_options={"view_setup": False})
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(fresh_database)
    await configure_tenant(fresh_database, tenant_document(tenant, org, ["Account", "Case"], poll_seconds=5))
    config = settings(emulator=emulator, kafka_bootstrap=kafka_bootstrap, topic_names=topic_names, dsn=fresh_database)
    sf = org.salesforce()
    caplog.set_level(logging.WARNING, logger="services.cdc_ingest.worker")

    async with (
        change_reader(kafka_bootstrap, topic_names) as reader,
        running(config, secrets_for(tenant, org)) as service,
    ):
        await wait_backfilled(fresh_database, tenant, 2)
        account = (await in_thread(sf.Account.create, {"Name": "Still streams"}))["id"]
        await reader.until(lambda _: bool(reader.of(account)), within=30)
        worker = service.state["workers"][tenant]
        assert worker.streamed == ["Account", "Case"]
        assert worker.polled == []

    assert reader.of(account)[0].source_position.channel == "/data/ChangeEvents"
    assert await not_enabled_rows(fresh_database, tenant) == []
    warnings = [
        r for r in caplog.records if r.name == "services.cdc_ingest.worker" and "CDC selection" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING

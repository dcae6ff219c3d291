"""The mapping rules through Mapper against the real database: Lead conversion, record filters,
reference rules, and a new mapping version or describe taking effect once re-checked."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from pydantic import SecretStr

from services.admin.config_store import ConfigStore
from services.common.change import ChangeKind, Side
from services.common.contract import to_value
from services.common.db import create_pool
from services.common.settings import PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.values import Reference, Value
from services.mapping.app import postgres_mapper
from services.mapping.contract import changes_of, keyed
from services.mapping.events import MappedEvent
from services.mapping.links import link_id_for
from services.mapping.mapper import Mapper
from tests.e2e.sync.harness import CLIENT, CONFIG, TENANT, prepare_database, record_changed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ChangeMapped = change_mapped_pb2.ChangeMapped
RecordChanged = record_changed_pb2.RecordChanged


class Outbox:
    """Stands in for the producer: keeps the ChangeMapped events sent."""

    def __init__(self) -> None:
        self.sent: list[ChangeMapped] = []

    async def __call__(self, events: Sequence[MappedEvent]) -> None:
        self.sent.extend(message for message, _ in keyed(events))


def config_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(CONFIG)
    change(document)
    return document


async def apply(dsn: str, document: dict[str, Any]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(document)], "test")
    finally:
        await conn.close()


async def execute(dsn: str, query: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


@asynccontextmanager
async def mapper(
    dsn: str, check_seconds: float = 0, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[Mapper, Outbox]]:
    outbox = Outbox()
    async with create_pool(PostgresSettings(dsn=SecretStr(dsn), pool_max_size=2)) as pool:
        yield postgres_mapper(pool, outbox, service_name="mapping", check_seconds=check_seconds, clock=clock), outbox


def lead_pair(app_object: str) -> dict[str, Any]:
    return {
        "name": "leads",
        "app": {"object": app_object},
        "salesforce": {"object": "Lead", "externalIdField": "Duplex_Id__c"},
        "fields": [{"app": "last_name", "salesforce": "LastName"}],
    }


async def test_a_lead_conversion_repoints_absorbs_or_retires_links_whichever_order_the_contact_comes_in(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    # Leads and contacts are one app object; the Lead pair comes first, so an app change finds the
    # Contact pair only through the link a conversion moved there.
    await apply(fresh_database, config_with(lambda d: d["spec"]["objects"].insert(0, lead_pair("contacts"))))
    await execute(
        fresh_database,
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id) VALUES"
        " ('acme', 'leads', 'LA', 'p1', '00Q1', 'dx-LA'), ('acme', 'leads', 'LB', 'p2', '00Q2', 'dx-LB'),"
        " ('acme', 'leads', 'LC', 'p3', '00Q3', 'dx-LC'), ('acme', 'contacts', 'LD', 'p4', '003D', 'dx-LD')",
    )

    def converted(lead: str, contact: str, event_id: str) -> RecordChanged:
        fields: dict[str, Value] = {"ConvertedContactId": contact, "ConvertedAccountId": "001X", "IsConverted": True}
        return record_changed(Side.CRM, "Lead", lead, fields, event_id=event_id, at=1)

    async with mapper(fresh_database) as (m, outbox):
        # 003B's own create comes before its lead's conversion: it founds a link of its own.
        early = record_changed(
            Side.CRM, "Contact", "003B", {"LastName": "Early"}, event_id="k-early", kind=ChangeKind.CREATE
        )
        assert await m.handle_batch(changes_of([early])) == {}
        early_link = link_id_for(TENANT, "contacts", Side.CRM, "003B")
        assert [e.link_id for e in outbox.sent] == [early_link]
        outbox.sent.clear()

        conversions = [
            converted("00Q1", "003A", "v1"),
            converted("00Q2", "003B", "v2"),
            converted("00Q3", "003D", "v3"),
        ]
        assert await m.handle_batch(changes_of(conversions)) == {}
        assert outbox.sent == []  # a conversion re-points links; it changes no field

        after = [
            # 003A's change after its lead's conversion finds the lead's link.
            record_changed(Side.CRM, "Contact", "003A", {"LastName": "Later"}, event_id="k-a", at=2),
            record_changed(Side.CRM, "Contact", "003B", {"LastName": "Early 2"}, event_id="k-b", at=2),
            # The converted lead's app record, edited in the app: the Contact pair's link, no new Lead.
            record_changed(Side.APP, "contacts", "p1", {"last_name": "From app"}, event_id="a-p1", at=3),
            # The retired lead's app record is no longer synced.
            record_changed(Side.APP, "contacts", "p3", {"last_name": "Gone"}, event_id="a-p3", at=3),
        ]
        assert await m.handle_batch(changes_of(after)) == {}

    assert [(e.source_event_id, e.object_pair, e.link_id, e.app_record_id, e.crm_record_id) for e in outbox.sent] == [
        ("k-a", "contacts", "LA", "p1", "003A"),
        ("k-b", "contacts", "LB", "p2", "003B"),
        ("a-p1", "contacts", "LA", "p1", "003A"),
    ]
    links = await fetch(
        fresh_database, "SELECT link_id, object_pair, app_record_id, crm_record_id, merged_into FROM links ORDER BY 1"
    )
    assert links == sorted(
        [
            ("LA", "contacts", "p1", "003A", None),
            ("LB", "contacts", "p2", "003B", None),  # absorbed the link 003B founded
            ("LC", "leads", "p3", None, "LD"),  # converted into a contact synced to another app record
            ("LD", "contacts", "p4", "003D", None),
            (early_link, "contacts", None, None, "LB"),
        ]
    )
    log = await fetch(fresh_database, "SELECT event, link_id, record_id FROM sync_log ORDER BY id")
    assert log == [("link.repointed", "LA", "00Q1"), ("link.repointed", "LB", "00Q2"), ("lead.converted", "LC", "00Q3")]


async def test_a_lead_is_never_converted_into_a_pair_on_another_app_object(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    # Leads are their own app object here; the Contact pair's app records are "contacts".
    await apply(fresh_database, config_with(lambda d: d["spec"]["objects"].append(lead_pair("leads"))))
    await execute(
        fresh_database,
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
        " VALUES ('acme', 'leads', 'LA', '7', '00Q1', 'dx-LA'), ('acme', 'contacts', 'LK', '7', '003K', 'dx-LK')",
    )
    lead = record_changed(Side.CRM, "Lead", "00Q1", {"ConvertedContactId": "003A"}, event_id="v1", at=1)
    contact = record_changed(Side.CRM, "Contact", "003A", {"LastName": "Doe"}, event_id="k1", at=2)
    async with mapper(fresh_database) as (m, outbox):
        assert await m.handle_batch(changes_of([lead, contact])) == {}

    # The lead's app id "7" names a lead; in the Contact pair it would name contact 7 (LK's).
    links = await fetch(fresh_database, "SELECT link_id, object_pair, app_record_id, crm_record_id FROM links")
    assert sorted(links) == sorted(
        [
            ("LA", "leads", "7", "00Q1"),
            ("LK", "contacts", "7", "003K"),
            (link_id_for(TENANT, "contacts", Side.CRM, "003A"), "contacts", None, "003A"),
        ]
    )
    assert [(e.link_id, e.app_record_id) for e in outbox.sent] == [
        (link_id_for(TENANT, "contacts", Side.CRM, "003A"), "")
    ]
    (row,) = await fetch(fresh_database, "SELECT event, link_id, message FROM sync_log")
    assert row[:2] == ("lead.converted", "LA")
    assert "app object leads" in row[2]


def with_rules(document: dict[str, Any]) -> None:
    partners, contacts = document["spec"]["objects"]
    partners["filter"] = {"app": [{"field": "status", "in": ["active"]}]}
    contacts["fields"][1]["reference"]["onUnresolved"] = "omit"
    document["spec"]["objects"].append(
        {
            "name": "deals",
            "app": {"object": "deals"},
            "salesforce": {"object": "Opportunity", "externalIdField": "Duplex_Id__c"},
            "fields": [
                {"app": "title", "salesforce": "Name"},
                {
                    "app": "partner_id",
                    "salesforce": "AccountId",
                    "transform": {"type": "reference"},
                    "reference": {"object": "partners", "onUnresolved": "reject"},
                },
            ],
        }
    )


async def test_record_filters_and_reference_rules_apply_through_the_mapper(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    await apply(fresh_database, config_with(with_rules))
    await execute(
        fresh_database,
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
        " VALUES ('acme', 'partners', 'LP', 'a9', '001Z', 'dx-LP')",
    )
    batch = [
        record_changed(Side.APP, "partners", "f1", {"name": "Closed Co", "status": "closed"}, event_id="p-out"),
        record_changed(Side.APP, "partners", "a1", {"name": "Open Co", "status": "active"}, event_id="p-in"),
        record_changed(Side.APP, "contacts", "c1", {"last_name": "Doe", "partner_id": "nope"}, event_id="c-omit"),
        record_changed(Side.APP, "deals", "d1", {"title": "Big", "partner_id": "nope"}, event_id="d-reject"),
        record_changed(Side.APP, "deals", "d2", {"title": "Small", "partner_id": "a9"}, event_id="d-linked"),
    ]
    async with mapper(fresh_database) as (m, outbox):
        refused = await m.handle_batch(changes_of(batch))

    assert list(refused) == [3]
    assert refused[3].reason.startswith("UNRESOLVED_REFERENCE: partner_id")
    by_source = {e.source_event_id: e for e in outbox.sent}
    assert list(by_source) == ["p-in", "c-omit", "d-linked"]
    omitted = by_source["c-omit"]
    assert [f.app_field for f in omitted.fields] == ["last_name"]
    assert [(d.field, d.reason) for d in omitted.dropped_fields] == [("partner_id", "unresolved reference (omit)")]
    (reference,) = [f for f in by_source["d-linked"].fields if f.app_field == "partner_id"]
    assert to_value(reference.crm_value) == Reference("001Z")

    assert await fetch(fresh_database, "SELECT count(*) FROM held_references") == [(0,)]  # omit never holds
    pairs = await fetch(fresh_database, "SELECT app_record_id FROM links ORDER BY 1")
    assert pairs == [("a1",), ("a9",), ("c1",), ("d2",)]  # the filtered record was never linked
    log = await fetch(fresh_database, "SELECT event, record_id, code, message, detail FROM sync_log ORDER BY id")
    assert [row[:3] for row in log] == [
        ("change.filtered", "f1", None),
        ("change.rejected", "d1", "UNRESOLVED_REFERENCE"),
    ]
    assert "partners record filter" in log[0][3]
    assert json.loads(log[0][4])["source_event_id"] == "p-out"


async def test_a_new_mapping_version_and_describe_are_used_once_re_checked(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    now = [0.0]

    def change(n: int) -> RecordChanged:
        fields: dict[str, Value] = {"name": "Acme", "phone": "555-0100", "website": "acme.example"}
        return record_changed(Side.APP, "partners", "a1", fields, event_id=f"e{n}", at=n)

    def with_website(document: dict[str, Any]) -> None:
        document["spec"]["objects"][0]["fields"].append({"app": "website", "salesforce": "Website"})

    async with mapper(fresh_database, check_seconds=30, clock=lambda: now[0]) as (m, outbox):
        assert await m.handle_batch(changes_of([change(0)])) == {}
        await apply(fresh_database, config_with(with_website))
        # Salesforce describes Phone as a formula only now (object names compare case-insensitively).
        await execute(
            fresh_database,
            "INSERT INTO crm_object_fields (tenant_id, object_name, fields) VALUES ($1, 'account', $2::jsonb)",
            TENANT,
            json.dumps(
                {
                    "Name": {"type": "string", "length": 255},
                    "Website": {"type": "url", "length": 255},
                    "Phone": {"type": "phone", "length": 40, "calculated": True, "updateable": False},
                }
            ),
        )
        now[0] = 29.0
        assert await m.handle_batch(changes_of([change(1)])) == {}
        now[0] = 30.0
        assert await m.handle_batch(changes_of([change(2)])) == {}

    def seen(event: ChangeMapped) -> tuple[int, list[str], list[str]]:
        return event.mapping_version, [f.app_field for f in event.fields], [d.field for d in event.dropped_fields]

    assert [seen(e) for e in outbox.sent] == [
        (1, ["name", "phone"], []),
        (1, ["name", "phone"], []),  # cached: neither the new version nor the describe is seen yet
        (2, ["name", "website"], ["phone"]),
    ]
    assert outbox.sent[2].dropped_fields[0].reason == "read-only in Salesforce (formula field)"


@pytest.mark.parametrize("together", [False, True], ids=["echoes-first", "one-batch"])
async def test_an_echo_whose_link_a_crash_rolled_back_keeps_its_id_and_the_founder_joins_it(
    fresh_database: str, together: bool
) -> None:
    # Mapping publishes a new link's ChangeMapped before its transaction commits: killed in
    # between, the link row is gone, but the resolver has had the record created on the other
    # side already. That record's echo can come back before the founding change is redelivered.
    await prepare_database(fresh_database)
    crm_founded = link_id_for(TENANT, "partners", Side.CRM, "001F")
    app_founded = link_id_for(TENANT, "partners", Side.APP, "pF")
    echoes = [
        # The app record Duplex created for the Salesforce-founded link carries its link id.
        record_changed(
            Side.APP,
            "partners",
            "pE",
            {"name": "Sf"},
            event_id="a-echo",
            kind=ChangeKind.CREATE,
            client=CLIENT,
            external_id=crm_founded,
        ),
        # The Salesforce record Duplex created for the app-founded link carries dx-<link id>.
        record_changed(
            Side.CRM,
            "Account",
            "001E",
            {"Name": "App", "Duplex_Id__c": f"dx-{app_founded}"},
            event_id="c-echo",
            kind=ChangeKind.CREATE,
            client=CLIENT,
        ),
    ]
    founders = [
        record_changed(Side.CRM, "Account", "001F", {"Name": "Sf"}, event_id="c-found", kind=ChangeKind.CREATE),
        record_changed(Side.APP, "partners", "pF", {"name": "App"}, event_id="a-found", kind=ChangeKind.CREATE),
    ]
    async with mapper(fresh_database) as (m, outbox):
        if together:
            assert await m.handle_batch(changes_of([*echoes, *founders])) == {}
        else:
            assert await m.handle_batch(changes_of(echoes)) == {}
            assert await m.handle_batch(changes_of(founders)) == {}

    links = await fetch(fresh_database, "SELECT link_id, app_record_id, crm_record_id FROM links ORDER BY 1")
    assert links == sorted([(crm_founded, "pE", "001F"), (app_founded, "pF", "001E")])
    assert sorted((e.source_event_id, e.link_id) for e in outbox.sent) == sorted(
        [("a-echo", crm_founded), ("c-echo", app_founded), ("c-found", crm_founded), ("a-found", app_founded)]
    )

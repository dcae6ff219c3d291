"""The mapper's main paths over in-memory storage: links made and found, what is mapped, what is
not and why, and a new configuration version taking effect."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.change import Change, ChangeKind, Side
from services.common.sync_log import Entry
from services.common.tenant_config import StoredConfig, parse_tenant_config
from services.common.values import Reference, Value
from services.mapping.events import MappedEvent, Unreadable
from services.mapping.links import Link, external_id_for, link_id_for, mapped_event_id
from services.mapping.mapper import Mapper
from services.mapping.translate import CrmFieldInfo, Dropped, MappedField
from tests.unit.mapping.fakes import FakeDatabase, Outbox

pytestmark = pytest.mark.unit

TENANT = "acme"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DOCUMENT: dict[str, Any] = {
    "apiVersion": "duplex.dev/v1",
    "kind": "Tenant",
    "metadata": {"name": TENANT},
    "spec": {
        "salesforce": {
            "instanceUrl": "https://acme.my.salesforce.com",
            "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
            "dailyApiCap": 5000,
            "callOptionsClient": "duplex-acme",
        },
        "objects": [
            {
                "name": "partners",
                "app": {"object": "partners"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "filter": {"app": [{"field": "status", "in": ["active", "closed"]}]},
                "fields": [
                    {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": 40}},
                    {
                        "app": "status",
                        "salesforce": "Status__c",
                        "transform": {
                            "type": "picklist",
                            "valueMap": {"active": "Active", "closed": "Closed", "suspended": "Suspended"},
                        },
                    },
                    {"app": "phone", "salesforce": "Phone"},
                    {"app": "revenue", "salesforce": "AnnualRevenue", "direction": "crm_to_app"},
                ],
            },
            {
                "name": "contacts",
                "app": {"object": "contacts"},
                "salesforce": {"object": "Contact", "externalIdField": "Duplex_Id__c"},
                "fields": [
                    {"app": "last_name", "salesforce": "LastName"},
                    {
                        "app": "partner_id",
                        "salesforce": "AccountId",
                        "transform": {"type": "reference"},
                        "reference": {"object": "partners", "onUnresolved": "hold"},
                    },
                ],
            },
        ],
    },
}
# A describe of the partners pair's object: every field it maps, as Salesforce reports them.
ACCOUNT_FIELDS = {
    name: CrmFieldInfo(name) for name in ("Id", "Name", "Status__c", "Phone", "AnnualRevenue", "Duplex_Id__c")
}


def stored(document: dict[str, Any], version: int = 1) -> StoredConfig:
    return StoredConfig(TENANT, version, f"sha-{version}", T0, "test", parse_tenant_config(document))


def change(
    side: Side,
    obj: str,
    rid: str,
    fields: dict[str, Value],
    *,
    event_id: str,
    kind: ChangeKind = ChangeKind.UPDATE,
    at: int = 0,
    tenant: str = TENANT,
) -> Change:
    return Change(event_id, tenant, side, obj, rid, kind, fields, T0 + timedelta(seconds=at), changed=frozenset(fields))


@pytest.fixture
def db() -> FakeDatabase:
    database = FakeDatabase()
    database.configs[TENANT] = stored(DOCUMENT)
    return database


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def mapper(db: FakeDatabase, outbox: Outbox) -> Mapper:
    return Mapper(db, links=db.open_links, configs=db, describes=db, sync_log=db, publish=outbox)


def link(link_id: str, app: str | None, crm: str | None, pair: str = "partners") -> Link:
    return Link(TENANT, pair, link_id, app, crm, external_id_for(link_id))


def crm_names(event: MappedEvent) -> dict[str, Value]:
    return {f.crm_field: f.crm_value for f in event.fields}


async def test_an_app_create_founds_a_link_and_is_mapped_onto_it(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    create = change(
        Side.APP, "partners", "a1", {"name": "Acme", "status": "active"}, event_id="e1", kind=ChangeKind.CREATE
    )
    assert await mapper.handle_batch([create]) == {}

    founded = link(link_id_for(TENANT, "partners", Side.APP, "a1"), "a1", None)
    assert list(db.links.values()) == [founded]
    assert outbox.sent == [
        MappedEvent(
            event_id=mapped_event_id(create),
            link=founded,
            mapping_version=1,
            side=Side.APP,
            kind=ChangeKind.CREATE,
            at=T0,
            origin_client="",
            source_event_id="e1",
            fields=(
                MappedField("name", "Name", "Acme", "Acme", changed=True),
                MappedField("status", "Status__c", "active", "Active", changed=True),
            ),
        )
    ]
    assert db.log == []


async def test_a_salesforce_update_of_a_linked_record_maps_onto_its_link(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    linked = db.add_link(link("L1", "a1", "001A"))
    update = change(Side.CRM, "Account", "001A", {"Name": "Acme 2", "Status__c": "Closed"}, event_id="u1", at=1)
    assert await mapper.handle_batch([update]) == {}

    assert list(db.links.values()) == [linked]
    (event,) = outbox.sent
    assert (event.link, event.side, event.kind) == (linked, Side.CRM, ChangeKind.UPDATE)
    assert {f.app_field: f.app_value for f in event.fields} == {"name": "Acme 2", "status": "closed"}


async def test_the_echo_of_a_record_duplex_created_binds_to_its_link_and_releases_held_references(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    founded = link_id_for(TENANT, "partners", Side.APP, "a1")
    assert (
        await mapper.handle_batch(
            [change(Side.APP, "partners", "a1", {"name": "Acme", "status": "active"}, event_id="a")]
        )
        == {}
    )
    # A contact referencing the partner before it has a Salesforce id: the reference is held.
    contact = change(Side.APP, "contacts", "c1", {"last_name": "Doe", "partner_id": "a1"}, event_id="c")
    assert await mapper.handle_batch([contact]) == {}
    assert [d.field for d in outbox.sent[1].dropped] == ["partner_id"]
    # Salesforce's event for the record Duplex created carries the link's external id.
    echo = change(Side.CRM, "Account", "001A", {"Name": "Acme", "Duplex_Id__c": f"dx-{founded}"}, event_id="s", at=1)
    assert await mapper.handle_batch([echo]) == {}

    partners = [v for v in db.links.values() if v.object_pair == "partners"]
    assert partners == [link(founded, "a1", "001A")]  # bound, not founded anew
    bound, released = outbox.sent[2:]
    assert (bound.link.link_id, bound.source_event_id) == (founded, "s")
    assert released.link.link_id == link_id_for(TENANT, "contacts", Side.APP, "c1")
    assert released.fields == (
        MappedField("partner_id", "AccountId", Reference("a1"), Reference("001A"), changed=True),
    )
    assert db.held == {}


async def test_a_record_outside_the_filter_is_not_linked_and_the_sync_log_says_why(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    prospect = change(Side.APP, "partners", "p1", {"name": "Maybe", "status": "prospect"}, event_id="f1")
    assert await mapper.handle_batch([prospect]) == {}

    assert (outbox.sent, db.links) == ([], {})
    assert db.log == [
        Entry(
            TENANT,
            "change.filtered",
            record_id="p1",
            message="app record does not match the partners record filter (status does not match): not synced",
            detail={"source_event_id": "f1", "object": "partners"},
        )
    ]


async def test_fields_the_mapping_or_salesforce_excludes_are_dropped(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    db.describes[(TENANT, "account")] = {
        **ACCOUNT_FIELDS,
        "Phone": CrmFieldInfo("Phone", calculated=True, updateable=False),
    }
    batch = [
        change(Side.APP, "partners", "a1", {"name": "Acme", "revenue": "5"}, event_id="both"),
        # Only fields that cannot travel this way: nothing is sent. The mapping's own direction is
        # no news; Salesforce refusing a field the mapping sends is.
        change(Side.APP, "partners", "a1", {"revenue": "6"}, event_id="direction-only", at=1),
        change(Side.APP, "partners", "a1", {"phone": "555"}, event_id="formula-only", at=2),
    ]
    assert await mapper.handle_batch(batch) == {}

    (event,) = outbox.sent
    assert crm_names(event) == {"Name": "Acme"}
    assert event.dropped == (Dropped("revenue", "direction is crm_to_app", as_configured=True),)
    assert [(r.event, r.message, r.detail["source_event_id"]) for r in db.log] == [
        ("change.dropped", "phone: read-only in Salesforce (formula field)", "formula-only")
    ]


async def test_a_rule_whose_salesforce_field_was_deleted_is_skipped_while_the_others_sync(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    db.describes[(TENANT, "account")] = {k: v for k, v in ACCOUNT_FIELDS.items() if k != "Phone"}
    batch = [change(Side.APP, "partners", "a1", {"name": "Acme", "phone": "555"}, event_id="e1")]
    assert await mapper.handle_batch(batch) == {}

    (event,) = outbox.sent
    assert crm_names(event) == {"Name": "Acme"}
    assert event.dropped == (Dropped("phone", "Phone no longer exists in Salesforce: rule paused"),)


async def test_changes_of_unknown_tenants_or_objects_and_unreadable_ones_are_refused_and_logged(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    batch: list[Change | Unreadable] = [
        change(Side.APP, "partners", "a1", {"name": "Acme"}, event_id="e0", tenant="nobody"),
        change(Side.APP, "invoices", "i1", {"n": 1}, event_id="e1"),
        change(Side.APP, "partners", "a2", {"name": "Fine", "status": "active"}, event_id="e2"),
        Unreadable("e3", TENANT, "a3", "missing origin_commit_time"),
        change(Side.APP, "partners", "a4", {"name": "x" * 41, "status": "active"}, event_id="e4"),
    ]
    refused = await mapper.handle_batch(batch)

    assert {i: e.reason for i, e in refused.items()} == {
        0: "UNKNOWN_TENANT: tenant has no configuration",
        1: "UNKNOWN_OBJECT: no object pair maps app object 'invoices'",
        3: "INVALID_CHANGE: missing origin_commit_time",
        4: "STRING_TOO_LONG: Name: 41 characters, at most 40 allowed",
    }
    assert [e.source_event_id for e in outbox.sent] == ["e2"]
    assert [link.app_record_id for link in db.links.values()] == ["a2"]  # a4's rolled back
    assert [(r.tenant_id, r.event, r.record_id, r.code, r.detail) for r in db.log] == [
        ("nobody", "change.rejected", "a1", "UNKNOWN_TENANT", {"source_event_id": "e0"}),
        (TENANT, "change.rejected", "i1", "UNKNOWN_OBJECT", {"source_event_id": "e1"}),
        (TENANT, "change.rejected", "a3", "INVALID_CHANGE", {"source_event_id": "e3"}),
        (TENANT, "change.rejected", "a4", "STRING_TOO_LONG", {"source_event_id": "e4"}),
    ]


async def test_a_delete_travels_on_its_link_and_a_never_synced_one_is_ignored(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    linked = db.add_link(link("L1", "a1", "001A"))
    batch = [
        change(Side.APP, "partners", "a1", {}, event_id="d1", kind=ChangeKind.DELETE),
        change(Side.APP, "partners", "a9", {}, event_id="d9", kind=ChangeKind.DELETE),
    ]
    assert await mapper.handle_batch(batch) == {}

    assert [(e.source_event_id, e.link, e.kind, e.fields) for e in outbox.sent] == [
        ("d1", linked, ChangeKind.DELETE, ())
    ]
    assert list(db.links.values()) == [linked]


async def test_a_new_configuration_version_is_used_from_the_next_batch(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    def update(n: int) -> Change:
        return change(
            Side.APP,
            "partners",
            "a1",
            {"name": "Acme", "website": "acme.example", "status": "active"},
            event_id=f"e{n}",
            at=n,
        )

    assert await mapper.handle_batch([update(0)]) == {}
    document = copy.deepcopy(DOCUMENT)
    document["spec"]["objects"][0]["fields"].append({"app": "website", "salesforce": "Website"})
    db.configs[TENANT] = stored(document, version=2)
    assert await mapper.handle_batch([update(1)]) == {}

    assert [(e.mapping_version, list(crm_names(e))) for e in outbox.sent] == [
        (1, ["Name", "Status__c"]),
        (2, ["Name", "Status__c", "Website"]),
    ]


async def test_the_filter_leak_is_closed_a_record_passes_on_what_it_is_known_to_be(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    # Before: an update without the filter's field passed, so an excluded record was linked and
    # synced on its next edit of any other field.
    prospect = change(Side.APP, "partners", "p1", {"name": "Maybe", "status": "prospect"}, event_id="f1")
    renamed = change(Side.APP, "partners", "p1", {"name": "Maybe Inc"}, event_id="f2", at=1)
    assert await mapper.handle_batch([prospect, renamed]) == {}
    assert (outbox.sent, db.links) == ([], {})
    assert [r.message for r in db.log][1] == (
        "app record does not match the partners record filter (the change does not carry status): not synced"
    )


async def test_a_linked_record_leaves_the_filter_stays_out_and_comes_back_whole(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    linked = db.add_link(link("L1", "a1", "001A"))
    # A linked record passed before: a change without the filter's field still does.
    assert await mapper.handle_batch([change(Side.APP, "partners", "a1", {"name": "Acme"}, event_id="e1")]) == {}
    assert len(outbox.sent) == 1

    left = change(Side.APP, "partners", "a1", {"status": "suspended"}, event_id="e2", at=1)
    later = change(Side.APP, "partners", "a1", {"name": "Acme 2"}, event_id="e3", at=2)
    assert await mapper.handle_batch([left, later]) == {}
    assert len(outbox.sent) == 1
    assert [(r.event, r.link_id) for r in db.log] == [("change.left_filter", "L1"), ("change.filtered", "L1")]
    assert db.outside == {(TENANT, "L1", Side.APP)}

    fields: dict[str, Value] = {"name": "Acme 3", "status": "active", "phone": "555"}
    at = T0 + timedelta(seconds=3)
    only_status = frozenset({"status"})
    back = Change("e4", TENANT, Side.APP, "partners", "a1", ChangeKind.UPDATE, fields, at, changed=only_status)
    assert await mapper.handle_batch([back]) == {}
    synced = outbox.sent[-1]
    assert synced.link == linked
    assert {f.app_field: f.changed for f in synced.fields} == {"name": True, "status": True, "phone": True}
    assert db.log[-1].event == "change.entered_filter"
    assert db.outside == set()


async def test_an_unlinked_update_that_matches_is_synced_whole(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    update = Change(
        "e1", TENANT, Side.APP, "partners", "a9", ChangeKind.UPDATE,
        {"name": "New", "status": "active"}, T0, changed=frozenset({"status"}),
    )  # fmt: skip
    assert await mapper.handle_batch([update]) == {}
    (event,) = outbox.sent
    assert all(f.changed for f in event.fields)


async def test_a_record_outside_on_the_salesforce_side_is_not_let_back_by_an_app_change(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    db.outside.add((TENANT, "L1", Side.CRM))
    matching = change(Side.APP, "partners", "a1", {"name": "Acme", "status": "active"}, event_id="e1")
    assert await mapper.handle_batch([matching]) == {}
    assert outbox.sent == []
    assert db.log[-1].message == (
        "app record does not match the partners record filter (it left the filter on the crm side): not synced"
    )
    assert db.outside == {(TENANT, "L1", Side.CRM)}


async def test_a_linked_record_is_decided_on_what_its_change_changed(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    # status came along unchanged (as cdc-ingest adds current values): newer than this edit, it decides nothing.
    fields: dict[str, Value] = {"name": "Renamed", "status": "suspended"}
    renamed = Change(
        "e1", TENANT, Side.APP, "partners", "a1", ChangeKind.UPDATE, fields, T0, changed=frozenset({"name"})
    )
    assert await mapper.handle_batch([renamed]) == {}
    assert len(outbox.sent) == 1
    assert db.outside == set()


async def test_undeletes_and_duplex_own_writes_are_not_held_back_by_the_filter(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    db.outside.add((TENANT, "L1", Side.APP))
    undelete = change(
        Side.APP, "partners", "a1", {"name": "Back", "status": "suspended"}, event_id="u", kind=ChangeKind.UNDELETE
    )
    assert await mapper.handle_batch([undelete]) == {}
    assert [e.kind for e in outbox.sent] == [ChangeKind.UNDELETE]


async def test_a_field_missing_from_a_describe_older_than_the_mapping_is_not_taken_for_deleted(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    db.add_link(link("L1", "a1", "001A"))
    db.describes[(TENANT, "account")] = {k: v for k, v in ACCOUNT_FIELDS.items() if k != "Phone"}
    db.described[(TENANT, "account")] = T0 - timedelta(days=1)
    batch = [change(Side.APP, "partners", "a1", {"name": "Acme", "phone": "555"}, event_id="e1")]
    assert await mapper.handle_batch(batch) == {}
    (event,) = outbox.sent
    assert crm_names(event) == {"Name": "Acme", "Phone": "555"}


async def test_with_on_leave_delete_a_record_leaving_is_deleted_across_and_comes_back_undeleted(
    mapper: Mapper, db: FakeDatabase, outbox: Outbox
) -> None:
    document = copy.deepcopy(DOCUMENT)
    document["spec"]["objects"][0]["filter"]["onLeave"] = "delete"
    db.configs[TENANT] = stored(document)
    db.add_link(link("L1", "a1", "001A"))
    left = change(Side.APP, "partners", "a1", {"status": "suspended"}, event_id="e1")
    assert await mapper.handle_batch([left]) == {}
    (deleted,) = outbox.sent
    assert (deleted.kind, deleted.fields) == (ChangeKind.DELETE, ())
    back = change(Side.APP, "partners", "a1", {"name": "Back", "status": "active"}, event_id="e2", at=1)
    assert await mapper.handle_batch([back]) == {}
    undeleted = outbox.sent[-1]
    assert undeleted.kind is ChangeKind.UNDELETE
    assert {f.app_field for f in undeleted.fields if f.changed} == {"name", "status"}
    assert [r.event for r in db.log] == ["change.left_filter", "change.entered_filter"]

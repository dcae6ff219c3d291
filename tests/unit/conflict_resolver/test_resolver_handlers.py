"""The resolver's handlers over an in-memory store: what a batch publishes, keeps and logs.

The same paths against PostgreSQL and in batches of many are in
tests/integration/conflict_resolver; here each path is one small story.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from prometheus_client import CollectorRegistry

from services.common.change import Change, Side
from services.common.codec import link_key, record_key
from services.common.contract import RecordChanged, from_proto, to_field_value, to_value
from services.common.metrics import Metrics
from services.common.tenant_config import StoredConfig, parse_tenant_config
from services.common.values import Value
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.resolve import LinkState
from tests.unit.conflict_resolver.fakes import FakeStore, Outbox

pytestmark = pytest.mark.unit

TENANT = "acme"
CLIENT = "duplex-acme"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CRM_NAMES = {"name": "Name", "phone": "Phone"}
CONFIG = parse_tenant_config(
    {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": TENANT},
        "spec": {
            "salesforce": {
                "instanceUrl": "https://acme.my.salesforce.com",
                "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
                "dailyApiCap": 5000,
                "callOptionsClient": CLIENT,
            },
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "conflictPolicy": "newest_wins",
                    "deletePolicy": "propagate",
                    "fields": [
                        {"app": "name", "salesforce": "Name"},
                        {"app": "phone", "salesforce": "Phone", "conflictPolicy": "app_unless_blank"},
                    ],
                }
            ],
        },
    }
)
STORED = StoredConfig(TENANT, 1, "", T0, "test", CONFIG)
# Created in the app and in Salesforce, and both sides known.
LINKED = LinkState("L1", "partners", "dx-L1", app_record_id="app-L1", crm_record_id="001L1")

WriteRecords = write_records_pb2.WriteRecords
WriteSettled = write_settled_pb2.WriteSettled


def mapped(
    event_id: str,
    fields: dict[str, Value],
    *,
    at: int,
    side: Side = Side.APP,
    kind: record_changed_pb2.ChangeKind.ValueType = record_changed_pb2.CHANGE_KIND_UPDATE,
    client: str = "",
    link: str = "L1",
    pair: str = "partners",
) -> change_mapped_pb2.ChangeMapped:
    event = change_mapped_pb2.ChangeMapped(
        event_id=event_id,
        tenant_id=TENANT,
        link_id=link,
        object_pair=pair,
        mapping_version=1,
        origin_side=record_changed_pb2.SIDE_APP if side is Side.APP else record_changed_pb2.SIDE_CRM,
        kind=kind,
        app_record_id=f"app-{link}",
        crm_record_id=f"001{link}" if side is Side.CRM else "",
        external_id=f"dx-{link}",
        origin_client=client,
        source_event_id=event_id,
    )
    for name, value in fields.items():
        event.fields.add(
            app_field=name,
            crm_field=CRM_NAMES[name],
            app_value=to_field_value(value),
            crm_value=to_field_value(value),
            changed=True,
        )
    event.origin_commit_time.FromDatetime(T0 + timedelta(seconds=at))
    return event


def settled(
    command: WriteRecords, *, rejected: bool = False, record_id: str = "", created: bool = False
) -> WriteSettled:
    record = command.records[0]
    outcome = WriteSettled(
        command_id=command.command_id,
        tenant_id=TENANT,
        link_id=record.link_id,
        crm_object=command.crm_object,
        operation=command.operation,
        status=write_settled_pb2.WRITE_STATUS_REJECTED if rejected else write_settled_pb2.WRITE_STATUS_SUCCEEDED,
        record_id=record_id or record.record_id,
        created=created,
        version=record.version,
    )
    if rejected:
        outcome.errors.add(status_code="FIELD_CUSTOM_VALIDATION_EXCEPTION", message="Name is locked", fields=["Name"])
    return outcome


class World:
    """A resolver over a fake store, with its two outboxes."""

    def __init__(self, *links: LinkState) -> None:
        self.store = FakeStore([STORED])
        for link in links:
            self.store.add_link(TENANT, link)
        self.crm = Outbox()
        self.app = Outbox()
        self.metrics = Metrics(CollectorRegistry())
        self.resolver = Resolver(
            self.store,
            publish_crm=self.crm,
            publish_app=self.app,
            service_name="conflict-resolver",
            metrics=self.metrics,
            clock=lambda: T0 + timedelta(minutes=1),
        )

    def commands(self) -> list[WriteRecords]:
        return [c for _, c in self.crm.sent if isinstance(c, WriteRecords)]

    def updates(self) -> list[Change]:
        return [from_proto(u) for _, u in self.app.sent if isinstance(u, RecordChanged)]

    def log(self, event: str) -> list[dict[str, Any]]:
        """The sync log rows of ``event``: code, message and decoded detail."""
        return [
            {"link": row[3], "code": row[5], "message": row[6], "detail": json.loads(row[7])}
            for row in self.store.tables.log
            if row[2] == event
        ]

    def pending_to_crm(self, field: str) -> list[Value]:
        record = self.store.tables.fields[(TENANT, "L1")][field]
        return [edit.value for edit in record.state.pending(Side.CRM)]

    def truth(self, field: str) -> Value:
        truth = self.store.tables.fields[(TENANT, "L1")][field].state.truth
        assert truth is not None
        return truth.value

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"tenant": TENANT, **labels})


async def test_a_salesforce_edit_becomes_an_app_update() -> None:
    world = World(LINKED)

    assert await world.resolver.on_mapped_batch([mapped("s1", {"name": "Acme Ltd"}, at=10, side=Side.CRM)]) == {}

    assert world.crm.sent == []
    ((key, _),) = world.app.sent
    assert key == record_key(TENANT, "partners", "app-L1")
    (update,) = world.updates()
    assert (update.side, update.object_type, update.record_id, str(update.kind)) == (
        Side.CRM,
        "partners",
        "app-L1",
        "update",
    )
    assert update.fields == {"name": "Acme Ltd"}
    # Tagged with the tenant's client id, so the app's own change event of it is known as an echo.
    assert update.origin_client == CLIENT
    assert world.truth("name") == "Acme Ltd"
    assert [row["detail"]["writes"] for row in world.log("change.resolved")] == [
        {"app": {"kind": "update", "fields": ["name"]}}
    ]
    # From Salesforce's commit at T0+10s to the update's publication at T0+60s.
    assert [row["detail"]["lag_ms"] for row in world.log("change.resolved")] == [50_000]
    assert world.sample("duplex_end_to_end_latency_seconds_sum", stage="app_update_published") == 50.0


async def test_an_app_change_becomes_a_salesforce_write_remembered_by_version() -> None:
    world = World()
    create = mapped("c1", {"name": "Acme", "phone": "555"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)

    assert await world.resolver.on_mapped_batch([create]) == {}

    assert world.app.sent == []
    ((key, _),) = world.crm.sent
    assert key == link_key(TENANT, "L1")
    (command,) = world.commands()
    assert command.operation == write_records_pb2.OPERATION_UPSERT
    assert (command.crm_object, command.external_id_field) == ("Account", "Duplex_Id__c")
    (record,) = command.records
    assert (record.link_id, record.external_id_value, record.version) == ("L1", "dx-L1", 1)
    assert {name: value.string_value for name, value in record.fields.items()} == {"Name": "Acme", "Phone": "555"}
    assert world.store.link(TENANT, "L1").version == 1
    assert world.store.tables.sent[(TENANT, "L1", 1)] == ("upsert", {"name": "Acme", "phone": "555"})
    assert world.pending_to_crm("name") == ["Acme"]


async def test_the_echo_of_a_write_still_pending_is_dropped() -> None:
    world = World(LINKED)
    await world.resolver.on_mapped_batch([mapped("u1", {"name": "Acme Ltd"}, at=10)])
    assert len(world.commands()) == 1
    assert world.pending_to_crm("name") == ["Acme Ltd"]

    # Salesforce's change event of that write, tagged with the client id Duplex writes with.
    echo = mapped("e1", {"name": "Acme Ltd"}, at=11, side=Side.CRM, client=CLIENT)
    assert await world.resolver.on_mapped_batch([echo]) == {}

    assert len(world.commands()) == 1
    assert world.app.sent == []
    assert world.pending_to_crm("name") == []
    # Counted, not logged one by one: the one change logged is the app's edit.
    assert [row["detail"]["side"] for row in world.log("change.resolved")] == ["app"]
    (row,) = world.log("echoes.dropped")
    assert row["detail"] == {"count": 1, "object_pair": "partners", "side": "crm", "echo": "origin_client"}
    assert world.sample("duplex_echoes_dropped_total", side="crm", reason="origin_client") == 1.0


async def test_a_conflict_is_decided_by_the_pairs_policy() -> None:
    world = World(LINKED)
    salesforce = mapped("s1", {"name": "crm edit"}, at=12, side=Side.CRM)
    # Made in the app before Salesforce's edit, delivered after it: under newest_wins, Salesforce's stays.
    app = mapped("u1", {"name": "older app edit"}, at=11)

    assert await world.resolver.on_mapped_batch([salesforce, app]) == {}

    assert world.commands() == []
    # The app had the older value: the first update gave it Salesforce's, and it keeps it.
    assert [update.fields for update in world.updates()] == [{"name": "crm edit"}]
    assert world.truth("name") == "crm edit"
    (conflict,) = world.log("conflict.decided")
    assert conflict["code"] == "newest_wins"
    assert conflict["detail"]["winner"] == "crm"
    assert conflict["message"].startswith("name: crm wins (")
    assert world.sample("duplex_conflicts_decided_total", policy="newest_wins", winner="crm") == 1.0


async def test_write_outcomes_apply_by_version() -> None:
    world = World(LinkState("L1", "partners", "dx-L1", app_record_id="app-L1"))
    await world.resolver.on_mapped_batch(
        [mapped("c1", {"name": "n0"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)]
    )
    (upsert,) = world.commands()

    # The writer created the record: its id is kept here and told to mapping's link.
    assert await world.resolver.on_settled_batch([settled(upsert, record_id="001L1", created=True)]) == {}
    assert world.store.link(TENANT, "L1").crm_record_id == "001L1"
    assert world.store.tables.mapping_crm_ids == {(TENANT, "L1"): "001L1"}
    assert [row["link"] for row in world.log("record.created")] == ["L1"]

    # Two edits in flight; Salesforce refuses the first for good.
    await world.resolver.on_mapped_batch([mapped("u1", {"name": "v1"}, at=10)])
    await world.resolver.on_mapped_batch([mapped("u2", {"name": "v2"}, at=11)])
    first, second = world.commands()[1:]
    assert (first.records[0].version, second.records[0].version) == (2, 3)
    assert world.pending_to_crm("name") == ["n0", "v1", "v2"]
    assert await world.resolver.on_settled_batch([settled(first, rejected=True)]) == {}

    # Only the values of that version stop waiting for their echo.
    assert world.pending_to_crm("name") == ["n0", "v2"]
    (rejected,) = world.log("write.rejected")
    assert (rejected["code"], rejected["message"]) == ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Name is locked")
    assert rejected["detail"]["version"] == 2
    assert rejected["detail"]["rolled_back"] == ["name"]


async def test_a_create_whose_echo_linked_the_id_first_still_says_created() -> None:
    world = World(LinkState("L1", "partners", "dx-L1", app_record_id="app-L1"))
    create = mapped("c1", {"name": "n0"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    await world.resolver.on_mapped_batch([create])
    (upsert,) = world.commands()
    # Salesforce's change event of the create overtakes the writer's outcome and links the id.
    echo = mapped("e1", {"name": "n0"}, at=1, side=Side.CRM, client=CLIENT, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    await world.resolver.on_mapped_batch([echo])
    assert world.store.link(TENANT, "L1").crm_record_id == "001L1"

    assert await world.resolver.on_settled_batch([settled(upsert, record_id="001L1", created=True)]) == {}

    # The timeline still shows the write that created it, once.
    assert [row["link"] for row in world.log("record.created")] == ["L1"]


async def test_a_redelivered_event_changes_nothing_twice() -> None:
    world = World(LINKED)
    events = [
        mapped("u1", {"name": "Acme Ltd"}, at=10),
        mapped("s1", {"phone": "555"}, at=11, side=Side.CRM),
    ]
    # The same event twice in one batch counts once.
    assert await world.resolver.on_mapped_batch([events[0], *events]) == {}
    (command,) = world.commands()
    assert len(world.app.sent) == 1
    applied = copy.deepcopy(world.store.tables)

    # Committed, but the offsets were not: the batch comes again.
    assert await world.resolver.on_mapped_batch(events) == {}
    assert len(world.commands()) == 1
    assert len(world.app.sent) == 1
    assert world.store.tables == applied

    # And so does an outcome.
    assert await world.resolver.on_settled_batch([settled(command, rejected=True)]) == {}
    settled_once = copy.deepcopy(world.store.tables)
    assert settled_once != applied
    assert await world.resolver.on_settled_batch([settled(command, rejected=True)]) == {}
    assert world.store.tables == settled_once


async def test_a_batch_whose_outputs_are_not_acknowledged_leaves_nothing_behind() -> None:
    world = World(LINKED)
    events = [mapped("u1", {"name": "Acme Ltd"}, at=10), mapped("s1", {"phone": "555"}, at=11, side=Side.CRM)]
    before = copy.deepcopy(world.store.tables)
    world.app.down = True

    with pytest.raises(ConnectionError):
        await world.resolver.on_mapped_batch(events)
    # Nothing marked processed: the batch comes again and does everything then.
    assert world.store.tables == before
    assert world.sample("duplex_end_to_end_latency_seconds_count", stage="app_update_published") is None

    world.app.down = False
    assert await world.resolver.on_mapped_batch(events) == {}
    assert len(world.app.sent) == 1
    assert world.sample("duplex_end_to_end_latency_seconds_count", stage="app_update_published") == 1.0


async def test_events_breaking_the_contract_are_handed_back_by_index() -> None:
    world = World(LINKED)
    no_link = mapped("bad-1", {"name": "x"}, at=1, link="")
    unknown_pair = mapped("bad-2", {"name": "x"}, at=1, pair="invoices")
    good = mapped("u1", {"name": "Acme Ltd"}, at=10)

    refused = await world.resolver.on_mapped_batch([no_link, good, unknown_pair])
    outcomes = await world.resolver.on_settled_batch([WriteSettled(tenant_id=TENANT, command_id="c")])

    assert sorted(refused) == [0, 2]
    assert "link_id" in refused[0].reason
    assert "invoices" in refused[2].reason
    assert [row["code"] for row in world.log("change.rejected")] == ["UNKNOWN_PAIR"]
    assert len(world.commands()) == 1  # the good one applied
    assert list(outcomes) == [0]


async def test_an_event_postgresql_cannot_store_is_refused_alone_with_its_reason_in_the_sync_log() -> None:
    world = World(LINKED)
    nul_link = mapped("bad-1", {"name": "x"}, at=1, link="L\x00")
    nul_event = mapped("bad-2\x00", {"name": "x"}, at=1)
    snan = mapped("bad-3", {"name": Decimal("sNaN")}, at=1)
    nul_value = mapped("u1", {"name": "Acme\x00Ltd"}, at=10)
    outcome = WriteSettled(tenant_id=TENANT, command_id="c", link_id="L1", record_id="001\x00")

    refused = await world.resolver.on_mapped_batch([nul_link, nul_event, nul_value, snan])
    refused_outcomes = await world.resolver.on_settled_batch([outcome])

    assert sorted(refused) == [0, 1, 3]
    assert refused[0].reason.startswith("ChangeMapped with U+0000 or a surrogate in link_id, app_record_id")
    assert "surrogate in event_id, which PostgreSQL cannot store" in refused[1].reason
    assert "signaling NaN in name" in refused[3].reason
    assert "surrogate in record_id" in refused_outcomes[0].reason
    rejected = world.log("change.rejected")
    assert [(row["link"], row["code"]) for row in rejected] == [
        ("L\\0", "UNSTORABLE_TEXT"),
        ("L1", "UNSTORABLE_TEXT"),
        ("L1", "INCOMPARABLE_VALUE"),
    ]
    assert [row["code"] for row in world.log("outcome.rejected")] == ["UNSTORABLE_TEXT"]
    # A value is no identifier: it is resolved and written on exactly.
    (command,) = world.commands()
    assert to_value(command.records[0].fields["Name"]) == "Acme\x00Ltd"
    assert world.truth("name") == "Acme\x00Ltd"


@pytest.mark.parametrize("side", [Side.APP, Side.CRM])
async def test_a_change_whose_output_is_too_large_for_a_record_is_refused_alone(side: Side) -> None:
    """A change small enough to map can still make a command (or app update) over Kafka's record
    limit, say with earlier edits still pending: that change alone is refused, the rest resolved."""
    world = World(LINKED, LinkState("L2", "partners", "dx-L2", app_record_id="app-L2", crm_record_id="001L2"))
    world.crm.max_size = world.app.max_size = 2_000
    events = [
        mapped("e1", {"name": "small"}, at=1, side=side),
        mapped("e2", {"name": "x" * 5_000}, at=2, side=side, link="L2"),
        mapped("e3", {"phone": "555"}, at=3, side=side),
    ]

    refused = await world.resolver.on_mapped_batch(events)

    assert list(refused) == [1]
    output = "the Salesforce write" if side is Side.APP else "the app update"
    assert refused[1].reason.startswith(f"RECORD_TOO_LARGE: {output} for this change is ")
    [row] = world.log("change.rejected")
    assert (row["link"], row["code"]) == ("L2", "RECORD_TOO_LARGE")
    sent = world.commands() if side is Side.APP else world.updates()
    assert len(sent) == 2
    # Refused, not resolved: its event is not marked processed, and L2 keeps no state from it.
    assert (TENANT, "e2") not in world.store.tables.processed
    assert (TENANT, "L2") not in world.store.tables.fields or not world.store.tables.fields[(TENANT, "L2")]


async def test_the_sync_log_stores_texts_from_events_escaped() -> None:
    world = World(LINKED)
    event = mapped("u1", {"name": "x"}, at=1)
    event.source_event_id = "src\x00"
    event.dropped_fields.add(field="Bad\x00Field", reason="too long")

    assert await world.resolver.on_mapped_batch([event]) == {}

    (row,) = world.log("change.resolved")
    assert row["detail"]["source_event_id"] == "src\\0"
    assert row["detail"]["dropped"] == {"Bad\\0Field": "too long"}


async def test_a_command_published_by_a_batch_that_did_not_commit_comes_again_with_its_version() -> None:
    # The writer skips a version at or below one it applied: a command republished after a crash
    # must carry the version it had, and the link's next command a higher one.
    world = World(LINKED)
    events = [mapped("u1", {"name": "Acme Ltd"}, at=10), mapped("s1", {"phone": "555"}, at=11, side=Side.CRM)]
    world.app.down = True
    with pytest.raises(ConnectionError):
        await world.resolver.on_mapped_batch(events)
    world.app.down = False

    assert await world.resolver.on_mapped_batch(events) == {}
    await world.resolver.on_mapped_batch([mapped("u2", {"name": "Acme Group"}, at=12)])

    lost, again, later = world.commands()
    assert again == lost
    assert (again.records[0].version, later.records[0].version) == (1, 2)


async def test_a_superseded_outcome_is_only_recorded_as_seen() -> None:
    world = World(LINKED)
    await world.resolver.on_mapped_batch([mapped("u1", {"name": "Acme Ltd"}, at=10)])
    (command,) = world.commands()
    outcome = settled(command)
    outcome.status = write_settled_pb2.WRITE_STATUS_SUPERSEDED
    before = copy.deepcopy(world.store.tables)

    assert await world.resolver.on_settled_batch([outcome]) == {}

    # The version, or a newer one, reached Salesforce before: nothing to roll back or learn.
    assert world.store.tables.links == before.links
    assert world.store.tables.fields == before.fields
    assert world.log("write.rejected") == []
    assert world.pending_to_crm("name") == ["Acme Ltd"]


async def test_after_a_refused_create_the_next_upsert_carries_every_field() -> None:
    """The app creates a partner without a name; Salesforce refuses it (a required field). Once
    the app names it, the upsert that creates the Account carries the phone too, not only the name."""
    world = World()
    create = mapped("c1", {"name": None, "phone": "555"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    assert await world.resolver.on_mapped_batch([create]) == {}
    (refused,) = world.commands()
    assert await world.resolver.on_settled_batch([settled(refused, rejected=True)]) == {}

    assert await world.resolver.on_mapped_batch([mapped("u1", {"name": "Named"}, at=5)]) == {}

    retry = world.commands()[-1]
    assert retry.operation == write_records_pb2.OPERATION_UPSERT
    assert {name: v.string_value for name, v in retry.records[0].fields.items()} == {"Name": "Named", "Phone": "555"}
    assert world.pending_to_crm("phone") == ["555"]


async def test_an_upsert_sent_while_a_create_is_on_its_way_carries_it_all_and_waits_once() -> None:
    world = World()
    create = mapped("c1", {"name": "Acme", "phone": "555"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    assert await world.resolver.on_mapped_batch([create, mapped("u1", {"name": "Acme Ltd"}, at=5)]) == {}

    # The create may yet be refused: the second upsert carries the phone too, awaited once.
    first, second = world.commands()
    assert {name: v.string_value for name, v in second.records[0].fields.items()} == {
        "Name": "Acme Ltd",
        "Phone": "555",
    }
    assert world.pending_to_crm("phone") == ["555"]
    # The first refused after the second went out: the second still carries everything.
    assert await world.resolver.on_settled_batch([settled(first, rejected=True)]) == {}
    assert world.pending_to_crm("phone") == []
    # Once the record exists, writes are updates of what changed.
    assert await world.resolver.on_settled_batch([settled(second, record_id="001L1", created=True)]) == {}
    assert await world.resolver.on_mapped_batch([mapped("u2", {"name": "Acme Group"}, at=9)]) == {}
    third = world.commands()[-1]
    assert third.operation == write_records_pb2.OPERATION_UPDATE
    assert {name: v.string_value for name, v in third.records[0].fields.items()} == {"Name": "Acme Group"}

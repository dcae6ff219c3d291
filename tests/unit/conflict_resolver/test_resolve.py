"""Table-driven tests of what one mapped change means for both sides of a link."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.common.change import ChangeKind, Side
from services.common.tenant_config import ObjectPair
from services.common.values import Reference, Value
from services.conflict_resolver.policy import Outcome
from services.conflict_resolver.resolve import (
    EchoReason,
    FieldChange,
    FieldRecord,
    LinkState,
    MappedChange,
    Operation,
    Resolution,
    resolve,
    settle_rejected,
    summarise,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLIENT = "duplex-acme"


def pair(delete_policy: str = "propagate", direction: str = "both", **extra: object) -> ObjectPair:
    doc: dict[str, object] = {
        "name": "partners",
        "app": {"object": "partners"},
        "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
        "direction": direction,
        "conflictPolicy": "newest_wins",
        "deletePolicy": delete_policy,
        "fields": [
            {"app": "name", "salesforce": "Name"},
            {"app": "status", "salesforce": "Status__c", "conflictPolicy": "app_wins"},
            {"app": "revenue", "salesforce": "AnnualRevenue", "direction": "crm_to_app"},
            {"app": "archived", "salesforce": "Archived__c"},
            {"app": "notes", "salesforce": "Description", "allowNulls": True},
        ],
        **extra,
    }
    return ObjectPair.model_validate(doc)


PAIR = pair()
SOFT = pair("soft_delete", softDeleteField={"app": "archived", "salesforce": "Archived__c"})


def link(**kw: object) -> LinkState:
    base: dict[str, object] = {"link_id": "L1", "object_pair": "partners", "external_id": "dx-L1"}
    return LinkState(**{**base, **kw})  # type: ignore[arg-type]


def change(
    side: Side,
    fields: dict[str, Value] | None = None,
    *,
    kind: ChangeKind = ChangeKind.UPDATE,
    at: int = 0,
    client: str = "",
    crm: dict[str, Value] | None = None,
    n: int = 1,
) -> MappedChange:
    names = {
        "name": "Name",
        "status": "Status__c",
        "revenue": "AnnualRevenue",
        "archived": "Archived__c",
        "notes": "Description",
    }
    crm = crm or {}
    return MappedChange(
        event_id=f"e{n}",
        tenant_id="acme",
        link_id="L1",
        object_pair="partners",
        mapping_version=1,
        side=side,
        kind=kind,
        fields=tuple(FieldChange(k, names[k], v, crm.get(k, v)) for k, v in (fields or {}).items()),
        at=T0 + timedelta(seconds=at),
        origin_client=client,
    )


def run(*changes: MappedChange, start: LinkState | None = None) -> list[Resolution]:
    """Apply changes in order, carrying link and field state forward."""
    state = start or link()
    fields: dict[str, FieldRecord] = {}
    out = []
    for c in changes:
        r = resolve(PAIR if c.object_pair == "partners" else SOFT, CLIENT, state, fields, c)
        state = r.link
        fields = {**fields, **r.fields}
        out.append(r)
    return out


def test_an_app_create_of_a_record_not_in_salesforce_is_upserted_on_the_external_id() -> None:
    (r,) = run(change(Side.APP, {"name": "Acme", "status": "active"}, kind=ChangeKind.CREATE))
    assert r.crm_write is not None
    assert (r.crm_write.operation, r.crm_write.external_id_value, r.crm_write.version) == (Operation.UPSERT, "dx-L1", 1)
    assert dict(r.crm_write.fields) == {"Name": "Acme", "Status__c": "active"}
    assert r.app_update is None


def test_a_known_salesforce_record_is_updated_by_id_with_only_the_changed_fields_in_salesforce_terms() -> None:
    c = change(Side.APP, {"status": "active"}, crm={"status": "Active"})
    (r,) = run(c, start=link(crm_record_id="001A", app_record_id="a1"))
    assert r.crm_write is not None
    assert (r.crm_write.operation, r.crm_write.record_id) == (Operation.UPDATE, "001A")
    assert dict(r.crm_write.fields) == {"Status__c": "Active"}
    assert dict(r.crm_write.pending) == {"status": "active"}


def test_a_salesforce_create_becomes_an_app_create_carrying_the_link_id() -> None:
    (r,) = run(change(Side.CRM, {"name": "Acme", "revenue": Decimal("10.50")}, kind=ChangeKind.CREATE))
    assert r.app_update is not None
    assert (r.app_update.kind, r.app_update.record_id, r.app_update.external_id) == (ChangeKind.CREATE, "", "L1")
    assert dict(r.app_update.fields) == {"name": "Acme", "revenue": Decimal("10.50")}
    assert r.crm_write is None


def test_a_tagged_echo_is_dropped_and_counted_and_never_written_back() -> None:
    first, echo = run(
        change(Side.APP, {"name": "Acme"}, n=1),
        change(Side.CRM, {"name": "Acme"}, at=1, client=CLIENT, n=2),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert first.crm_write is not None
    assert echo.crm_write is None
    assert echo.app_update is None
    assert echo.echo is EchoReason.ORIGIN_CLIENT
    assert [d.outcome for d in echo.decisions] == [Outcome.ECHO]
    assert echo.fields["name"].state.pending_crm == ()


def test_an_untagged_change_carrying_the_synced_value_is_an_echo_by_value() -> None:
    _, same = run(
        change(Side.APP, {"name": "Acme"}, n=1),
        change(Side.CRM, {"name": "Acme"}, at=2, n=2),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert same.echo is EchoReason.VALUES
    assert same.crm_write is None
    assert same.app_update is None


@pytest.mark.parametrize(
    ("field", "app_at", "crm_at", "winner", "app_write", "crm_write"),
    [
        # newest_wins: the later commit wins, whichever side it comes from.
        # Our write of the app's value is still in flight to Salesforce: its value goes after it.
        ("name", 2, 3, Side.CRM, {"name": "crm"}, {"Name": "crm"}),
        # The app's value is already in flight to Salesforce and lands after its edit: no new write.
        ("name", 3, 2, Side.APP, None, None),
        # app_wins: the app's value stands even when Salesforce's is newer.
        ("status", 2, 3, Side.APP, None, None),
    ],
)
def test_concurrent_edits_are_settled_by_the_field_policy(
    field: str,
    app_at: int,
    crm_at: int,
    winner: Side,
    app_write: dict[str, Value] | None,
    crm_write: dict[str, Value] | None,
) -> None:
    # The app edits, Duplex sends it to Salesforce, and Salesforce edits before our write echoes.
    crm_name = {"name": "Name", "status": "Status__c"}[field]
    _, _, concurrent = run(
        change(Side.APP, {field: "v0"}, n=1),
        change(Side.APP, {field: "app"}, at=app_at, n=2),
        change(Side.CRM, {field: "crm"}, at=crm_at, n=3),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    (decision,) = concurrent.decisions
    assert decision.conflict
    assert decision.winner is winner
    assert (dict(concurrent.app_update.fields) if concurrent.app_update else None) == app_write
    # Salesforce must end on the winner: a write goes after the pending one unless that already carries it.
    assert (dict(concurrent.crm_write.fields) if concurrent.crm_write else None) == crm_write
    assert crm_write is None or crm_name in crm_write


def test_a_blank_never_overwrites_data_unless_the_mapping_allows_nulls() -> None:
    _, blank_name, _, null_notes = run(
        change(Side.APP, {"name": "Acme", "notes": "hello"}, n=1),
        change(Side.CRM, {"name": None}, at=1, n=2),
        change(Side.APP, {"notes": "x"}, at=2, n=3),
        change(Side.CRM, {"notes": None}, at=3, n=4),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert blank_name.app_update is None
    assert blank_name.decisions[0].reason.endswith("blank does not overwrite data")
    assert null_notes.app_update is not None
    assert dict(null_notes.app_update.fields) == {"notes": None}


def test_a_field_flowing_crm_to_app_is_never_written_to_salesforce() -> None:
    (r,) = run(change(Side.APP, {"revenue": Decimal(5)}), start=link(crm_record_id="001A", app_record_id="a1"))
    assert r.crm_write is None


def test_duplicate_and_stale_deliveries_change_nothing() -> None:
    first, dup, stale = run(
        change(Side.CRM, {"name": "B"}, at=5, n=1),
        change(Side.CRM, {"name": "B"}, at=5, n=2),
        change(Side.CRM, {"name": "A"}, at=4, n=3),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert first.app_update is not None
    assert [d.outcome for d in dup.decisions] == [Outcome.DUPLICATE]
    assert [d.outcome for d in stale.decisions] == [Outcome.STALE]
    assert dup.app_update is None
    assert stale.app_update is None


@pytest.mark.parametrize(
    ("policy", "side", "expect_crm", "expect_app"),
    [
        ("propagate", Side.APP, Operation.DELETE, None),
        ("propagate", Side.CRM, None, ChangeKind.DELETE),
        ("ignore", Side.APP, None, None),
        ("ignore", Side.CRM, None, None),
    ],
)
def test_deletes_follow_the_delete_policy(
    policy: str, side: Side, expect_crm: Operation | None, expect_app: ChangeKind | None
) -> None:
    p = pair(policy)
    r = resolve(p, CLIENT, link(crm_record_id="001A", app_record_id="a1"), {}, change(side, kind=ChangeKind.DELETE))
    assert (r.crm_write.operation if r.crm_write else None) == expect_crm
    assert (r.app_update.kind if r.app_update else None) == expect_app
    assert r.link.deleted(side)
    if expect_crm:
        assert r.crm_write is not None
        assert r.crm_write.record_id == "001A"


def test_soft_delete_sets_the_flag_on_the_other_side_through_the_policy() -> None:
    c = change(Side.CRM, kind=ChangeKind.DELETE)
    r = resolve(SOFT, CLIENT, link(crm_record_id="001A", app_record_id="a1"), {}, c)
    assert r.app_update is not None
    assert dict(r.app_update.fields) == {"archived": True}
    assert r.crm_write is None
    # The flag went pending on the app side: its tagged echo will be recognised.
    assert r.fields["archived"].state.pending_app[0].value is True


def test_no_write_reaches_a_record_deleted_on_that_side_so_it_is_never_resurrected() -> None:
    start = link(crm_record_id="001A", app_record_id="a1", crm_deleted=True)
    r = resolve(PAIR, CLIENT, start, {}, change(Side.APP, {"name": "Late"}))
    assert r.crm_write is None
    assert r.fields["name"].state.pending_crm == ()
    late_crm = resolve(PAIR, CLIENT, start, {}, change(Side.CRM, {"name": "Late"}))
    assert late_crm.app_update is None


def test_a_repeated_delete_is_an_echo_and_duplex_deletes_are_recognised_by_client() -> None:
    start = link(crm_record_id="001A", app_record_id="a1", crm_deleted=True)
    again = resolve(PAIR, CLIENT, start, {}, change(Side.CRM, kind=ChangeKind.DELETE))
    assert again.echo is EchoReason.VALUES
    assert again.app_update is None
    ours = resolve(
        PAIR, CLIENT, link(crm_record_id="001A"), {}, change(Side.CRM, kind=ChangeKind.DELETE, client=CLIENT)
    )
    assert ours.echo is EchoReason.ORIGIN_CLIENT
    assert ours.app_update is None
    assert ours.link.crm_deleted


def test_an_app_undelete_recreates_the_salesforce_record_with_every_field_it_held() -> None:
    _created, deleted, undeleted = run(
        change(Side.APP, {"name": "Acme", "status": "active"}, kind=ChangeKind.CREATE, n=1),
        change(Side.APP, kind=ChangeKind.DELETE, at=1, n=2),
        change(Side.APP, {"name": "Acme"}, kind=ChangeKind.UNDELETE, at=2, n=3),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert deleted.crm_write is not None
    assert deleted.crm_write.operation is Operation.DELETE
    assert undeleted.crm_write is not None
    assert undeleted.crm_write.operation is Operation.UPSERT
    assert dict(undeleted.crm_write.fields) == {"Name": "Acme", "Status__c": "active"}
    assert not undeleted.link.crm_deleted
    assert undeleted.link.crm_record_id is None


def test_a_crm_undelete_restores_the_app_record() -> None:
    _, _, undeleted = run(
        change(Side.CRM, {"name": "Acme"}, kind=ChangeKind.CREATE, n=1),
        change(Side.CRM, kind=ChangeKind.DELETE, at=1, n=2),
        change(Side.CRM, {"name": "Acme"}, kind=ChangeKind.UNDELETE, at=2, n=3),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert undeleted.app_update is not None
    assert (undeleted.app_update.kind, dict(undeleted.app_update.fields)) == (ChangeKind.UNDELETE, {"name": "Acme"})


def test_a_restored_truth_is_written_in_salesforce_terms() -> None:
    # Salesforce loses an app_wins conflict (its edit is older than the app's, delivered late, after
    # our write landed): the app's value must be restored as Salesforce spells it.
    _, _, lost = run(
        change(Side.APP, {"status": "active"}, crm={"status": "Active"}, at=5, n=1),
        change(Side.CRM, {"status": "active"}, crm={"status": "Active"}, at=6, client=CLIENT, n=2),
        change(Side.CRM, {"status": "suspended"}, crm={"status": "Suspended"}, at=3, n=3),
        start=link(crm_record_id="001A", app_record_id="a1"),
    )
    assert lost.crm_write is not None
    assert dict(lost.crm_write.fields) == {"Status__c": "Active"}


@pytest.mark.parametrize(
    ("policy", "first", "second", "blank", "crm_write", "app_write"),
    [
        # Salesforce's "b" loses to the app's "a", then the app blanks: "b" is restored as spelt there.
        ("app_unless_blank", Side.APP, Side.CRM, Side.APP, "B", "b"),
        # The app's "a" loses to Salesforce's "b", then Salesforce blanks: "a" goes back as "A".
        ("crm_unless_blank", Side.APP, Side.CRM, Side.CRM, "A", "a"),
    ],
)
def test_a_reversed_conflict_writes_the_lost_edit_in_salesforce_terms(
    policy: str, first: Side, second: Side, blank: Side, crm_write: str, app_write: str
) -> None:
    status = {"app": "status", "salesforce": "Status__c", "conflictPolicy": policy, "allowNulls": True}
    p = pair(fields=[status])
    state, fields = link(crm_record_id="001A", app_record_id="a1"), dict[str, FieldRecord]()
    results = []
    for c in (
        change(first, {"status": "a"}, crm={"status": "A"}, at=1, n=1),
        change(second, {"status": "b"}, crm={"status": "B"}, at=2, n=2),
        change(blank, {"status": None}, at=3, n=3),
    ):
        r = resolve(p, CLIENT, state, fields, c)
        state, fields = r.link, {**fields, **r.fields}
        results.append(r)

    reversed_ = results[-1]
    (decision,) = reversed_.decisions
    assert (decision.outcome, decision.conflict, decision.winner) == (Outcome.REJECTED, True, blank.other)
    assert reversed_.crm_write is not None
    assert dict(reversed_.crm_write.fields) == {"Status__c": crm_write}
    assert reversed_.app_update is not None
    assert dict(reversed_.app_update.fields) == {"status": app_write}
    assert (fields["status"].crm_form, fields["status"].lost_crm_form) == (crm_write, None)


def test_a_rejected_write_rolls_back_exactly_its_pending_values() -> None:
    (r,) = run(change(Side.APP, {"name": "Acme"}), start=link(crm_record_id="001A", app_record_id="a1"))
    assert r.crm_write is not None
    settled = settle_rejected(r.fields, r.crm_write.pending)
    assert settled["name"].state.pending_crm == ()
    assert settled["name"].state.truth == r.fields["name"].state.truth


def test_references_travel_in_each_sides_terms() -> None:
    c = change(Side.APP, {"name": Reference("a9")}, crm={"name": Reference("001Z")})
    (r,) = run(c, start=link(crm_record_id="001A", app_record_id="a1"))
    assert r.crm_write is not None
    assert r.crm_write.fields["Name"] == Reference("001Z")


def test_an_untagged_change_carrying_an_older_pending_value_is_an_echo_by_value_and_writes_nothing() -> None:
    # The app sent "A" then "B" to Salesforce; "A" comes back untagged (a re-emitted event) after
    # "B" went out. It is our own write: dropped, counted, and it must not win as a newer edit.
    start = link(crm_record_id="001A", app_record_id="a1")
    first, second, late = run(
        change(Side.APP, {"name": "A"}, at=1, n=1),
        change(Side.APP, {"name": "B"}, at=2, n=2),
        change(Side.CRM, {"name": "A"}, at=3, n=3),
        start=start,
    )
    assert first.crm_write is not None
    assert second.crm_write is not None
    assert (late.crm_write, late.app_update) == (None, None)
    assert late.echo is EchoReason.VALUES
    assert [(d.outcome, d.echo, d.conflict) for d in late.decisions] == [(Outcome.ECHO, EchoReason.VALUES, False)]
    assert late.fields["name"].state.truth == second.fields["name"].state.truth
    assert summarise(late).echoes == 1
    assert summarise(late).conflicts == ()


def soft_pair(direction: str = "both", **soft: str) -> ObjectPair:
    return pair("soft_delete", direction, softDeleteField=soft or {"app": "archived", "salesforce": "Archived__c"})


LINKED = {"crm_record_id": "001A", "app_record_id": "a1"}


# (pair, side, kinds in order) -> for the last change: (Salesforce write, its fields, app update, its
# fields, deleted on app, deleted on Salesforce).
DELETE_TABLE = [
    # propagate, both ways
    ("propagate", "both", Side.APP, ["delete"], Operation.DELETE, {}, None, None, True, True),
    ("propagate", "both", Side.CRM, ["delete"], None, None, ChangeKind.DELETE, {}, True, True),
    (
        "propagate",
        "both",
        Side.APP,
        ["delete", "undelete"],
        Operation.UPSERT,
        {"Name": "Acme"},
        None,
        None,
        False,
        False,
    ),
    (
        "propagate",
        "both",
        Side.CRM,
        ["delete", "undelete"],
        None,
        None,
        ChangeKind.UNDELETE,
        {"name": "Acme"},
        False,
        False,
    ),
    # propagate on one-way pairs: deletes and undeletes flow downstream only
    ("propagate", "app_to_crm", Side.APP, ["delete"], Operation.DELETE, {}, None, None, True, True),
    ("propagate", "app_to_crm", Side.CRM, ["delete"], None, None, None, None, False, True),
    ("propagate", "app_to_crm", Side.CRM, ["delete", "undelete"], None, None, None, None, False, False),
    ("propagate", "crm_to_app", Side.CRM, ["delete"], None, None, ChangeKind.DELETE, {}, True, True),
    ("propagate", "crm_to_app", Side.APP, ["delete"], None, None, None, None, True, False),
    ("propagate", "crm_to_app", Side.APP, ["delete", "undelete"], None, None, None, None, False, False),
    (
        "propagate",
        "crm_to_app",
        Side.CRM,
        ["delete", "undelete"],
        None,
        None,
        ChangeKind.UNDELETE,
        {"name": "Acme"},
        False,
        False,
    ),
    # ignore: the side's own record state is tracked, nothing travels
    ("ignore", "both", Side.APP, ["delete"], None, None, None, None, True, False),
    ("ignore", "both", Side.CRM, ["delete"], None, None, None, None, False, True),
    ("ignore", "both", Side.APP, ["delete", "undelete"], None, None, None, None, False, False),
    ("ignore", "both", Side.CRM, ["delete", "undelete"], None, None, None, None, False, False),
    # soft delete: the flag is set (and cleared) on the other side, starting from either side
    ("soft_delete", "both", Side.APP, ["delete"], Operation.UPDATE, {"Archived__c": True}, None, None, True, False),
    ("soft_delete", "both", Side.CRM, ["delete"], None, None, ChangeKind.UPDATE, {"archived": True}, False, True),
    (
        "soft_delete",
        "both",
        Side.APP,
        ["delete", "undelete"],
        Operation.UPDATE,
        {"Archived__c": False},
        None,
        None,
        False,
        False,
    ),
    (
        "soft_delete",
        "both",
        Side.CRM,
        ["delete", "undelete"],
        None,
        None,
        ChangeKind.UPDATE,
        {"archived": False},
        False,
        False,
    ),
    # soft delete on one-way pairs: only deletes flowing downstream are flagged
    ("soft_delete", "app_to_crm", Side.CRM, ["delete"], None, None, None, None, False, True),
    ("soft_delete", "crm_to_app", Side.APP, ["delete"], None, None, None, None, True, False),
    ("soft_delete", "crm_to_app", Side.CRM, ["delete"], None, None, ChangeKind.UPDATE, {"archived": True}, False, True),
]


@pytest.mark.parametrize(
    ("policy", "direction", "side", "kinds", "crm_op", "crm_fields", "app_kind", "app_fields", "app_del", "crm_del"),
    DELETE_TABLE,
    ids=lambda v: str(v) if not isinstance(v, dict | list) else "-".join(map(str, v)) or "{}",
)
def test_deletes_and_undeletes_follow_the_delete_policy_and_direction(
    policy: str,
    direction: str,
    side: Side,
    kinds: list[str],
    crm_op: Operation | None,
    crm_fields: dict[str, Value] | None,
    app_kind: ChangeKind | None,
    app_fields: dict[str, Value] | None,
    app_del: bool,
    crm_del: bool,
) -> None:
    p = soft_pair(direction) if policy == "soft_delete" else pair(policy, direction)
    # The record exists on both sides, synced: a name both sides hold.
    state = link(**LINKED)
    fields: dict[str, FieldRecord] = {}
    created = resolve(p, CLIENT, state, fields, change(side, {"name": "Acme"}, kind=ChangeKind.CREATE))
    state, fields = created.link, {**fields, **created.fields}
    for target in Side:
        if target is not side and (created.crm_write if target is Side.CRM else created.app_update):
            echo = resolve(p, CLIENT, state, fields, change(target, {"name": "Acme"}, at=1, client=CLIENT, n=2))
            state, fields = echo.link, {**fields, **echo.fields}
    r = created
    for i, kind in enumerate(kinds):
        r = resolve(p, CLIENT, state, fields, change(side, kind=ChangeKind(kind), at=10 + i, n=10 + i))
        state, fields = r.link, {**fields, **r.fields}

    assert (r.crm_write.operation if r.crm_write else None) == crm_op
    assert (dict(r.crm_write.fields) if r.crm_write else None) == (crm_fields if crm_op is not Operation.DELETE else {})
    assert (r.app_update.kind if r.app_update else None) == app_kind
    assert (dict(r.app_update.fields) if r.app_update else None) == app_fields
    assert (r.link.app_deleted, r.link.crm_deleted) == (app_del, crm_del)
    assert r.echo is None
    assert r.notes


def test_the_soft_delete_flags_echo_is_recognised_and_never_written_back() -> None:
    p = soft_pair()
    r = resolve(p, CLIENT, link(**LINKED), {}, change(Side.APP, kind=ChangeKind.DELETE))
    assert r.crm_write is not None
    assert dict(r.crm_write.fields) == {"Archived__c": True}
    # Salesforce's echo of the flag: tagged, or untagged carrying the pending value.
    for client in (CLIENT, ""):
        echo = resolve(p, CLIENT, r.link, r.fields, change(Side.CRM, {"archived": True}, at=1, client=client, n=2))
        assert (echo.crm_write, echo.app_update) == (None, None)
        assert echo.echo is (EchoReason.ORIGIN_CLIENT if client else EchoReason.VALUES)


def test_a_soft_delete_flag_that_is_not_a_mapped_field_is_still_written() -> None:
    p = soft_pair(salesforce="IsArchived__c")
    r = resolve(p, CLIENT, link(**LINKED), {}, change(Side.APP, kind=ChangeKind.DELETE))
    assert r.crm_write is not None
    assert dict(r.crm_write.fields) == {"IsArchived__c": True}
    back = resolve(p, CLIENT, r.link, r.fields, change(Side.APP, kind=ChangeKind.UNDELETE, at=1, n=2))
    assert back.crm_write is not None
    assert dict(back.crm_write.fields) == {"IsArchived__c": False}
    # The flag lives in Salesforce only: a Salesforce delete writes nothing to the app.
    crm = resolve(p, CLIENT, link(**LINKED), {}, change(Side.CRM, kind=ChangeKind.DELETE))
    assert crm.app_update is None


@pytest.mark.parametrize("side", list(Side))
def test_duplex_own_deletes_and_undeletes_are_echoes_that_only_track_the_record(side: Side) -> None:
    deleted = resolve(PAIR, CLIENT, link(**LINKED), {}, change(side, kind=ChangeKind.DELETE, client=CLIENT))
    assert (deleted.crm_write, deleted.app_update, deleted.echo) == (None, None, EchoReason.ORIGIN_CLIENT)
    assert deleted.link.deleted(side)
    back = resolve(PAIR, CLIENT, deleted.link, {}, change(side, kind=ChangeKind.UNDELETE, at=1, client=CLIENT, n=2))
    assert (back.crm_write, back.app_update) == (None, None)
    assert not back.link.deleted(side)


def test_a_delete_before_the_other_side_has_the_record_deletes_nothing() -> None:
    r = resolve(PAIR, CLIENT, link(app_record_id="a1"), {}, change(Side.APP, kind=ChangeKind.DELETE))
    assert (r.crm_write, r.app_update) == (None, None)
    assert r.link.app_deleted
    assert not r.link.crm_deleted
    assert any("nothing to delete" in n for n in r.notes)


def test_an_update_from_a_side_where_the_record_is_deleted_is_ignored() -> None:
    start = link(**LINKED, app_deleted=True)
    r = resolve(PAIR, CLIENT, start, {}, change(Side.APP, {"name": "Late"}))
    assert (r.crm_write, r.app_update, r.fields) == (None, None, {})


def test_an_echo_from_a_side_whose_record_is_deleted_is_still_counted_and_writes_nothing() -> None:
    # Our write of "Acme" landed on Salesforce just before an app delete was propagated there.
    first, deleted = run(
        change(Side.APP, {"name": "Acme"}, n=1),
        change(Side.APP, kind=ChangeKind.DELETE, at=1, n=2),
        start=link(**LINKED),
    )
    assert deleted.link.crm_deleted
    fields = first.fields
    for client, reason in ((CLIENT, EchoReason.ORIGIN_CLIENT), ("", EchoReason.VALUES)):
        echo = resolve(PAIR, CLIENT, deleted.link, fields, change(Side.CRM, {"name": "Acme"}, at=2, client=client, n=3))
        assert (echo.crm_write, echo.app_update, echo.echo) == (None, None, reason)
    # A genuine late edit from there is ignored, and not an echo.
    late = resolve(PAIR, CLIENT, deleted.link, fields, change(Side.CRM, {"name": "Other"}, at=2, n=4))
    assert (late.crm_write, late.app_update, late.echo) == (None, None, None)

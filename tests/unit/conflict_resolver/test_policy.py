"""Table-driven tests of the per-field conflict rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.common.change import Side
from services.common.tenant_config import ConflictPolicy as Policy
from services.common.tenant_config import Direction
from services.common.values import Value, is_blank, same_value
from services.conflict_resolver.policy import (
    Edit,
    FieldRule,
    FieldState,
    Outcome,
    conflict_winner,
    observe,
    roll_back,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP, CRM = Side.APP, Side.CRM


def t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def edit(value: Value, author: Side, at: int) -> Edit:
    return Edit(value, author, t(at))


@pytest.mark.parametrize(
    ("value", "blank"),
    [(None, True), ("", True), ("  ", True), ((), True), ("x", False), (0, False), (False, False), (("a",), False)],
)
def test_is_blank(value: Value, blank: bool) -> None:
    assert is_blank(value) is blank


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (None, "", True),
        ("a", "a", True),
        ("a", "A", False),
        (Decimal("1.10"), Decimal("1.10"), True),
        (1, True, False),  # an int and a bool are different field values
        (1, 1.0, False),
        (("a", "b"), ("a", "b"), True),
    ],
)
def test_same_value(a: Value, b: Value, same: bool) -> None:
    assert same_value(a, b) is same


# policy x (proposal, truth) -> winner. Proposal and truth always come from different sides.
WINNER_CASES = [
    # app wins / crm wins ignore time and blanks
    (Policy.APP_WINS, edit("a", APP, 1), edit("c", CRM, 2), APP),
    (Policy.APP_WINS, edit("c", CRM, 2), edit("a", APP, 1), APP),
    (Policy.APP_WINS, edit(None, APP, 3), edit("c", CRM, 2), APP),
    (Policy.CRM_WINS, edit("a", APP, 9), edit("c", CRM, 2), CRM),
    (Policy.CRM_WINS, edit("c", CRM, 1), edit("a", APP, 9), CRM),
    # newest wins by origin commit time; ties go to the CRM
    (Policy.NEWEST_WINS, edit("a", APP, 3), edit("c", CRM, 2), APP),
    (Policy.NEWEST_WINS, edit("a", APP, 1), edit("c", CRM, 2), CRM),
    (Policy.NEWEST_WINS, edit("c", CRM, 5), edit("a", APP, 4), CRM),
    (Policy.NEWEST_WINS, edit("c", CRM, 3), edit("a", APP, 4), APP),
    (Policy.NEWEST_WINS, edit("a", APP, 4), edit("c", CRM, 4), CRM),
    (Policy.NEWEST_WINS, edit("c", CRM, 4), edit("a", APP, 4), CRM),
    # unless-blank: the preferred side wins unless its value is blank
    (Policy.APP_UNLESS_BLANK, edit("a", APP, 1), edit("c", CRM, 2), APP),
    (Policy.APP_UNLESS_BLANK, edit("", APP, 3), edit("c", CRM, 2), CRM),
    (Policy.APP_UNLESS_BLANK, edit("c", CRM, 3), edit(None, APP, 2), CRM),
    (Policy.APP_UNLESS_BLANK, edit(None, CRM, 3), edit("a", APP, 2), APP),
    (Policy.CRM_UNLESS_BLANK, edit("a", APP, 3), edit("c", CRM, 2), CRM),
    (Policy.CRM_UNLESS_BLANK, edit("a", APP, 3), edit((), CRM, 2), APP),
    (Policy.CRM_UNLESS_BLANK, edit(None, CRM, 3), edit("a", APP, 2), APP),
]


@pytest.mark.parametrize(("policy", "proposal", "truth", "winner"), WINNER_CASES)
def test_conflict_winner(policy: Policy, proposal: Edit, truth: Edit, winner: Side) -> None:
    assert conflict_winner(policy, proposal, truth)[0] is winner


def test_every_policy_is_covered_by_the_winner_table() -> None:
    assert {case[0] for case in WINNER_CASES} == set(Policy)


BOTH_NEWEST = FieldRule(Policy.NEWEST_WINS)


def synced(value: Value, author: Side = CRM, at: int = 1) -> FieldState:
    """A field both sides hold, last authored by ``author``."""
    e = edit(value, author, at)
    return FieldState(truth=e, seen_app=e if author is APP else None, seen_crm=e if author is CRM else None)


def test_first_value_flows_to_the_other_side() -> None:
    d = observe(BOTH_NEWEST, FieldState(), CRM, "Acme", t(1), from_duplex=False)

    assert d.outcome is Outcome.ACCEPTED
    assert d.writes == {APP: edit("Acme", CRM, 1)}
    assert d.state.pending_app == (edit("Acme", CRM, 1),)
    assert not d.conflict


def test_an_edit_on_top_of_the_truth_wins_whatever_the_policy() -> None:
    # The app received the CRM's value (no write pending) and then changed it: no conflict.
    for policy in Policy:
        d = observe(FieldRule(policy), synced("old", CRM, 1), APP, "new", t(2), from_duplex=False)
        assert d.outcome is Outcome.ACCEPTED, policy
        assert d.writes == {CRM: edit("new", APP, 2)}, policy
        assert not d.conflict


def test_echo_by_origin_client_is_dropped_and_confirms() -> None:
    state = synced("a", APP, 1).with_pending(CRM, (edit("a", APP, 1),))

    d = observe(BOTH_NEWEST, state, CRM, "a", t(5), from_duplex=True)

    assert d.outcome is Outcome.ECHO
    assert d.writes == {}
    assert d.state.pending_crm == ()


def test_an_untagged_value_equal_to_the_pending_write_writes_nothing_and_confirms_nothing() -> None:
    state = synced("a", APP, 1).with_pending(CRM, (edit("a", APP, 1),))

    d = observe(BOTH_NEWEST, state, CRM, "a", t(5), from_duplex=False)

    assert (d.outcome, d.writes) == (Outcome.UNCHANGED, {})
    # A person may have typed it before our write landed: the write stays pending, and the newer
    # edit becomes the truth's authorship.
    assert d.state.pending_crm == (edit("a", APP, 1),)
    assert d.state.truth == edit("a", CRM, 5)


def test_a_write_of_ours_read_back_is_not_a_newer_edit_but_a_hidden_edit_is() -> None:
    # We wrote "a" (its echo confirmed it) then "b" to Salesforce. A re-read after a CDC gap (no
    # origin client, stamped with the record's last modification) comes while "b" is in flight.
    sent = observe(BOTH_NEWEST, synced("z", APP, 0), APP, "a", t(1), from_duplex=False).state
    confirmed = observe(BOTH_NEWEST, sent, CRM, "a", t(2), from_duplex=True).state
    state = observe(BOTH_NEWEST, confirmed, APP, "b", t(3), from_duplex=False).state
    assert state.written_crm == edit("a", APP, 1)
    assert state.pending_crm == (edit("b", APP, 3),)

    ours = observe(BOTH_NEWEST, state, CRM, "a", t(9), from_duplex=False, read_back=True)
    hidden = observe(BOTH_NEWEST, state, CRM, "c", t(9), from_duplex=False, read_back=True)
    # The same value in a change event is someone's edit: typed again, it is the newest.
    typed = observe(BOTH_NEWEST, state, CRM, "a", t(9), from_duplex=False)

    assert (ours.outcome, ours.writes, ours.state) == (Outcome.UNCHANGED, {}, state)
    assert hidden.outcome is Outcome.ACCEPTED
    assert hidden.state.truth == edit("c", CRM, 9)
    # Written back to Salesforce too, so it survives our "b" landing after it.
    assert hidden.writes == {APP: edit("c", CRM, 9), CRM: edit("c", CRM, 9)}
    assert typed.outcome is Outcome.ACCEPTED
    # Salesforce's own last edit, read back with a later modification stamp, is not newer either.
    edited = observe(BOTH_NEWEST, confirmed, CRM, "s", t(4), from_duplex=False).state
    behind = observe(BOTH_NEWEST, edited, APP, "b", t(5), from_duplex=False).state
    again = observe(BOTH_NEWEST, behind, CRM, "s", t(9), from_duplex=False, read_back=True)
    assert (again.outcome, again.writes) == (Outcome.UNCHANGED, {})


def test_our_write_read_back_leaves_later_delivered_edits_fresh() -> None:
    # Our "a" (app, t1) is in flight to Salesforce while its stream is stalled; meanwhile a rep typed
    # "s" (t4), which our late write then overwrote. The re-read (stamped t9) shows our "a"; the rep's
    # edit, delivered after it, must still be seen as newer than "a" and restored on both sides.
    state = observe(BOTH_NEWEST, synced("z", APP, 0), APP, "a", t(1), from_duplex=False).state

    read = observe(BOTH_NEWEST, state, CRM, "a", t(9), from_duplex=False, read_back=True)
    late = observe(BOTH_NEWEST, read.state, CRM, "s", t(4), from_duplex=False)

    assert (read.outcome, read.writes, read.state) == (Outcome.UNCHANGED, {}, state)
    assert late.outcome is Outcome.ACCEPTED
    assert late.writes == {APP: edit("s", CRM, 4), CRM: edit("s", CRM, 4)}


def test_an_echo_of_an_older_write_never_writes() -> None:
    state = synced("b", APP, 2).with_pending(CRM, (edit("b", APP, 2),))

    d = observe(BOTH_NEWEST, state, CRM, "a", t(5), from_duplex=True)

    assert (d.outcome, d.writes) == (Outcome.ECHO, {})
    assert d.state.pending_crm == (edit("b", APP, 2),)


def test_a_tagged_echo_carrying_a_value_duplex_never_had_is_that_sides_own() -> None:
    # The Id (or a default) Salesforce set while creating the record Duplex asked for.
    d = observe(BOTH_NEWEST, FieldState(), CRM, "001A", t(5), from_duplex=True)

    assert d.outcome is Outcome.ACCEPTED
    assert d.writes == {APP: edit("001A", CRM, 5)}
    assert d.state.truth == edit("001A", CRM, 5)


def test_stale_and_duplicate_deliveries_change_nothing() -> None:
    first = observe(BOTH_NEWEST, FieldState(), APP, "a", t(5), from_duplex=False).state

    again = observe(BOTH_NEWEST, first, APP, "a", t(5), from_duplex=False)
    older = observe(BOTH_NEWEST, first, APP, "z", t(4), from_duplex=False)

    assert (again.outcome, again.state, again.writes) == (Outcome.DUPLICATE, first, {})
    assert (older.outcome, older.state, older.writes) == (Outcome.STALE, first, {})


def test_an_edit_equal_to_the_truth_writes_nothing() -> None:
    d = observe(BOTH_NEWEST, synced("a", CRM, 1), APP, "a", t(3), from_duplex=False)

    assert (d.outcome, d.writes) == (Outcome.UNCHANGED, {})


# A conflict: the CRM changed "a" → "c" at t=2 and a write of "c" to the app is in flight when the
# app's own concurrent edit arrives.
def conflicting_state() -> FieldState:
    return synced("c", CRM, 2).with_pending(APP, (edit("c", CRM, 2),))


@pytest.mark.parametrize(
    ("policy", "app_value", "app_at", "outcome", "writes"),
    [
        (Policy.APP_WINS, "x", 1, Outcome.ACCEPTED, {CRM: edit("x", APP, 1), APP: edit("x", APP, 1)}),
        (Policy.CRM_WINS, "x", 3, Outcome.REJECTED, {}),
        (Policy.NEWEST_WINS, "x", 3, Outcome.ACCEPTED, {CRM: edit("x", APP, 3), APP: edit("x", APP, 3)}),
        (Policy.NEWEST_WINS, "x", 1, Outcome.REJECTED, {}),
        (Policy.NEWEST_WINS, "x", 2, Outcome.REJECTED, {}),  # tie: crm wins
        (Policy.APP_UNLESS_BLANK, "x", 1, Outcome.ACCEPTED, {CRM: edit("x", APP, 1), APP: edit("x", APP, 1)}),
        (Policy.APP_UNLESS_BLANK, None, 3, Outcome.REJECTED, {}),
        (Policy.CRM_UNLESS_BLANK, "x", 3, Outcome.REJECTED, {}),
    ],
)
def test_concurrent_edits_are_settled_by_policy(
    policy: Policy, app_value: Value, app_at: int, outcome: Outcome, writes: dict[Side, Edit]
) -> None:
    d = observe(FieldRule(policy), conflicting_state(), APP, app_value, t(app_at), from_duplex=False)

    assert d.conflict
    assert d.outcome is outcome
    assert d.writes == writes
    if outcome is Outcome.REJECTED:
        # The pending write of the truth still lands after the app's edit and restores it.
        assert d.state.pending_app == (edit("c", CRM, 2),)
        assert d.state.truth == edit("c", CRM, 2)


def test_crm_unless_blank_lets_the_app_win_over_a_blank_crm() -> None:
    state = synced(None, CRM, 2).with_pending(APP, (edit(None, CRM, 2),))

    d = observe(FieldRule(Policy.CRM_UNLESS_BLANK, allow_nulls=True), state, APP, "x", t(1), from_duplex=False)

    assert d.outcome is Outcome.ACCEPTED
    assert CRM in d.writes


@pytest.mark.parametrize("policy", list(Policy))
def test_a_blank_never_overwrites_data_unless_nulls_are_allowed(policy: Policy) -> None:
    d = observe(FieldRule(policy), synced("data", CRM, 1), APP, None, t(2), from_duplex=False)

    assert d.outcome is Outcome.UNCHANGED
    assert d.writes == {}
    assert d.state.truth == edit("data", CRM, 1)


def test_a_blank_travels_when_nulls_are_allowed() -> None:
    d = observe(
        FieldRule(Policy.NEWEST_WINS, allow_nulls=True), synced("data", CRM, 1), APP, None, t(2), from_duplex=False
    )

    assert d.writes == {CRM: edit(None, APP, 2)}


def test_a_first_blank_is_not_sent_to_a_side_we_know_nothing_about() -> None:
    d = observe(BOTH_NEWEST, FieldState(), APP, "", t(1), from_duplex=False)

    assert d.writes == {}


@pytest.mark.parametrize(
    ("direction", "side", "writes_to"),
    [
        (Direction.APP_TO_CRM, APP, {CRM}),
        (Direction.APP_TO_CRM, CRM, set()),
        (Direction.CRM_TO_APP, CRM, {APP}),
        (Direction.CRM_TO_APP, APP, set()),
        (Direction.BOTH, APP, {CRM}),
        (Direction.BOTH, CRM, {APP}),
    ],
)
def test_direction_limits_which_side_is_written(direction: Direction, side: Side, writes_to: set[Side]) -> None:
    d = observe(FieldRule(Policy.NEWEST_WINS, direction), synced("a", side, 1), side, "b", t(2), from_duplex=False)

    assert set(d.writes) == writes_to


def test_a_refused_write_is_rolled_back() -> None:
    state = synced("a", APP, 1).with_pending(CRM, (edit("a", APP, 1),))

    assert roll_back(state, CRM, "a").pending_crm == ()
    assert roll_back(state, CRM, "other").pending_crm == (edit("a", APP, 1),)


def test_an_echo_confirms_the_oldest_matching_write_and_drops_superseded_ones() -> None:
    writes = (edit("a", APP, 1), edit("b", APP, 2), edit("a", APP, 3), edit("c", APP, 4))
    state = FieldState(truth=edit("c", APP, 4)).with_pending(CRM, writes)

    first = observe(BOTH_NEWEST, state, CRM, "a", t(9), from_duplex=True)
    second = observe(BOTH_NEWEST, first.state, CRM, "a", t(10), from_duplex=True)
    coalesced = observe(BOTH_NEWEST, state, CRM, "c", t(9), from_duplex=True)

    assert first.state.pending_crm == writes[1:]
    assert second.state.pending_crm == writes[3:]
    assert coalesced.state.pending_crm == ()

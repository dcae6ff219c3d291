"""Table-driven tests of the per-field conflict rules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
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


def test_an_untagged_value_equal_to_the_pending_write_is_an_echo_and_confirms_nothing() -> None:
    state = synced("a", APP, 1).with_pending(CRM, (edit("a", APP, 1),))

    d = observe(BOTH_NEWEST, state, CRM, "a", t(5), from_duplex=False)

    assert (d.outcome, d.writes) == (Outcome.ECHO, {})
    # Dropped: the truth keeps its author and time (an untagged echo's commit time must not make the
    # truth look newer than the app's own later-delivered edits), and the write stays pending until
    # its tagged echo confirms it.
    assert d.state.truth == edit("a", APP, 1)
    assert d.state.pending_crm == (edit("a", APP, 1),)
    assert d.state.seen_crm == edit("a", CRM, 5)


def test_an_untagged_late_echo_of_an_older_pending_write_is_dropped_not_taken_as_an_edit() -> None:
    # We sent "a" then "b" to Salesforce; "a" comes back untagged after the app's "b". Before, it was
    # taken as a newer Salesforce edit: a conflict it won, writing "a" to both sides over "b".
    sent = observe(BOTH_NEWEST, synced("z", APP, 0), APP, "a", t(1), from_duplex=False).state
    state = observe(BOTH_NEWEST, sent, APP, "b", t(2), from_duplex=False).state
    assert state.pending_crm == (edit("a", APP, 1), edit("b", APP, 2))

    late = observe(BOTH_NEWEST, state, CRM, "a", t(3), from_duplex=False)
    again = observe(BOTH_NEWEST, late.state, CRM, "a", t(3), from_duplex=False)
    first = observe(BOTH_NEWEST, late.state, CRM, "a", t(4), from_duplex=True)
    second = observe(BOTH_NEWEST, first.state, CRM, "b", t(5), from_duplex=True)

    assert (late.outcome, late.writes, late.conflict) == (Outcome.ECHO, {}, False)
    assert late.state.truth == edit("b", APP, 2)
    assert late.state.pending_crm == state.pending_crm
    assert (again.outcome, again.writes) == (Outcome.DUPLICATE, {})
    assert (first.outcome, first.writes, first.state.pending_crm) == (Outcome.ECHO, {}, (edit("b", APP, 2),))
    assert (second.outcome, second.writes, second.state.pending_crm) == (Outcome.ECHO, {}, ())
    assert second.state.truth == edit("b", APP, 2)


def test_someones_edit_equal_to_an_older_pending_write_is_an_edit_not_an_echo() -> None:
    # Found by the fault test: a record read back after its events expired showed Salesforce's "a"
    # (dated to the gap), Duplex wrote "a" back; Salesforce's older "b" event then arrived and Duplex
    # wrote "b"; the rep's edit "a", made after "b", was taken for the echo of the pending "a", and
    # "b" overwrote it. Tagged by the rep's client, it can only be the rep's edit.
    sent = observe(BOTH_NEWEST, synced("z", CRM, 0), CRM, "a", t(1), from_duplex=False).state
    state = observe(BOTH_NEWEST, sent, APP, "y", t(2), from_duplex=False).state
    state = observe(BOTH_NEWEST, state, CRM, "b", t(3), from_duplex=False).state
    state = state.with_pending(CRM, (edit("a", CRM, 1), edit("b", CRM, 3)))

    rep = observe(BOTH_NEWEST, state, CRM, "a", t(4), from_duplex=False, foreign=True)
    untagged = observe(BOTH_NEWEST, state, CRM, "a", t(4), from_duplex=False)

    assert (rep.outcome, rep.state.truth) == (Outcome.ACCEPTED, edit("a", CRM, 4))
    assert rep.writes[APP] == edit("a", CRM, 4)
    # Written to Salesforce too: it lands after "b", which would otherwise overwrite it.
    assert rep.writes[CRM] == edit("a", CRM, 4)
    # Untagged, it may be Duplex's "a" coming back late: still an echo (docs/guarantees.md).
    assert untagged.outcome is Outcome.ECHO


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("allow_nulls", [False, True])
@pytest.mark.parametrize("pending", [("a", "b"), ("b", "a"), ("a", "b", "c")])
def test_a_value_equal_to_any_pending_write_to_that_side_is_an_echo_under_every_policy(
    policy: Policy, allow_nulls: bool, pending: tuple[str, ...]
) -> None:
    writes = tuple(edit(v, APP, i + 1) for i, v in enumerate(pending))
    state = FieldState(truth=writes[-1], seen_app=writes[-1]).with_pending(CRM, writes)
    rule = FieldRule(policy, allow_nulls=allow_nulls)

    for value in pending:
        d = observe(rule, state, CRM, value, t(9), from_duplex=False)
        assert (d.outcome, d.writes, d.conflict) == (Outcome.ECHO, {}, False), value
        assert (d.state.truth, d.state.pending_crm) == (state.truth, writes)
    # A value pending to the other side only is no echo from this one: the app edited.
    other = observe(rule, state, APP, "a" if pending[-1] != "a" else "b", t(9), from_duplex=False)
    assert other.outcome is Outcome.ACCEPTED
    # Nor is a value never written to that side.
    typed = observe(rule, state, CRM, "n", t(9), from_duplex=False)
    assert typed.outcome in {Outcome.ACCEPTED, Outcome.REJECTED}
    assert typed.conflict


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


# The conflict table: policy x proposing side x proposed value x time against the truth x the truth
# (data or blank) x allow_nulls, every combination. The other side authored the truth "t" at T=10.
# When the truth could travel (data, or nulls allowed) a write of it to the proposing side is
# still in flight: the proposer edited without having it. Otherwise the proposer holds what it
# had, and its edit is concurrent only when it is older than the truth.
VALUE_KINDS = {"value": "x", "empty": "", "null": None, "equal": "<truth>"}
TIMES = {"newer": 11, "older": 9, "tie": 10}
TRUTHS = {"data": "t", "blank": None}


@dataclass(frozen=True)
class Row:
    policy: Policy
    side: Side
    kind: str
    time: str
    truth_kind: str
    allow_nulls: bool

    @property
    def truth(self) -> Edit:
        return edit(TRUTHS[self.truth_kind], self.side.other, 10)

    @property
    def travels(self) -> bool:
        return self.allow_nulls or self.truth_kind == "data"

    @property
    def proposal(self) -> Edit:
        value = self.truth.value if self.kind == "equal" else VALUE_KINDS[self.kind]
        return edit(value, self.side, TIMES[self.time])

    def state(self) -> FieldState:
        seen = edit("before", self.side, 0)
        state = synced(self.truth.value, self.side.other, 10).with_seen(self.side, seen)
        return state.with_pending(self.side, (self.truth,)) if self.travels else state


ROWS = [Row(*combo) for combo in itertools.product(Policy, Side, VALUE_KINDS, TIMES, TRUTHS, (False, True))]


def blank(value: Value) -> bool:
    return value is None or value == ""


def expected(row: Row) -> tuple[Outcome, dict[Side, Edit], Edit, bool]:
    """(outcome, writes, truth after, conflict), from the rules as the spec states them."""
    p, truth, side, other = row.proposal, row.truth, row.side, row.side.other
    in_flight = row.travels  # our write of the truth to the proposer has not landed
    if blank(p.value) == blank(truth.value) and (blank(p.value) or p.value == truth.value):
        if in_flight:
            return Outcome.ECHO, {}, truth, False  # the value we are writing there: an echo, dropped
        return Outcome.UNCHANGED, {}, (p if p.at > truth.at else truth), False
    concurrent = in_flight or p.at < truth.at
    if concurrent:
        app, crm = (p, truth) if side is APP else (truth, p)
        won = {
            Policy.APP_WINS: app,
            Policy.CRM_WINS: crm,
            Policy.NEWEST_WINS: app if app.at > crm.at else crm,
            Policy.APP_UNLESS_BLANK: crm if blank(app.value) else app,
            Policy.CRM_UNLESS_BLANK: app if blank(crm.value) else crm,
        }[row.policy]
        if won is truth:
            # The truth must end up on the proposer again: already on its way, or written now.
            restore = {} if in_flight or not row.travels else {side: truth}
            return Outcome.REJECTED, restore, truth, True
    if blank(p.value) and not row.allow_nulls and not blank(truth.value):
        return Outcome.UNCHANGED, {}, truth, concurrent  # a blank never overwrites data
    writes = {}
    if row.allow_nulls or not blank(p.value):
        writes[other] = p
    if in_flight:
        writes[side] = p  # lands after our write of the truth, which would otherwise overwrite it
    return Outcome.ACCEPTED, writes, p, concurrent


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=lambda r: (
        f"{r.policy}-{r.side}-{r.kind}-{r.time}-truth_{r.truth_kind}-{'nulls' if r.allow_nulls else 'nonull'}"
    ),
)
def test_the_conflict_table(row: Row) -> None:
    outcome, writes, truth, conflict = expected(row)
    rule = FieldRule(row.policy, allow_nulls=row.allow_nulls)

    d = observe(rule, row.state(), row.side, row.proposal.value, row.proposal.at, from_duplex=False)

    assert (d.outcome, d.writes, d.state.truth, d.conflict) == (outcome, writes, truth, conflict)
    # Only a tagged echo confirms a pending write; the seen edit makes a redelivery a duplicate.
    assert d.state.pending(row.side) == row.state().pending(row.side) + ((row.proposal,) if row.side in writes else ())
    again = observe(rule, d.state, row.side, row.proposal.value, row.proposal.at, from_duplex=False)
    assert (again.outcome, again.writes, again.state) == (Outcome.DUPLICATE, {}, d.state)


def test_the_conflict_table_is_complete() -> None:
    keys = {(r.policy, r.side, r.kind, r.time, r.truth_kind, r.allow_nulls) for r in ROWS}
    assert keys == set(itertools.product(Policy, Side, VALUE_KINDS, TIMES, TRUTHS, (False, True)))
    assert len(ROWS) == len(Policy) * 2 * 4 * 3 * 2 * 2
    # Every outcome occurs from either side under every policy, but a side its policy always
    # favours (app_wins for the app, crm_wins for Salesforce) never loses.
    for policy, side in itertools.product(Policy, Side):
        outcomes = {expected(r)[0] for r in ROWS if (r.policy, r.side) == (policy, side)}
        favoured = (policy, side) in {(Policy.APP_WINS, APP), (Policy.CRM_WINS, CRM)}
        assert outcomes == set(Outcome) - {Outcome.STALE, Outcome.DUPLICATE} - (
            {Outcome.REJECTED} if favoured else set()
        )


# A few rows spelled out, as a check on the table's oracle itself.
@pytest.mark.parametrize(
    ("policy", "side", "value", "at", "outcome"),
    [
        (Policy.APP_WINS, APP, "x", 9, Outcome.ACCEPTED),
        (Policy.APP_WINS, CRM, "x", 11, Outcome.REJECTED),
        (Policy.CRM_WINS, APP, "x", 11, Outcome.REJECTED),
        (Policy.CRM_WINS, CRM, "x", 9, Outcome.ACCEPTED),
        (Policy.NEWEST_WINS, APP, "x", 11, Outcome.ACCEPTED),
        (Policy.NEWEST_WINS, APP, "x", 9, Outcome.REJECTED),
        (Policy.NEWEST_WINS, APP, "x", 10, Outcome.REJECTED),  # tie: Salesforce wins
        (Policy.NEWEST_WINS, CRM, "x", 10, Outcome.ACCEPTED),  # tie: Salesforce wins
        (Policy.NEWEST_WINS, CRM, "x", 9, Outcome.REJECTED),
        (Policy.APP_UNLESS_BLANK, APP, "", 11, Outcome.REJECTED),
        (Policy.APP_UNLESS_BLANK, APP, "x", 9, Outcome.ACCEPTED),
        (Policy.APP_UNLESS_BLANK, CRM, "x", 11, Outcome.REJECTED),
        (Policy.CRM_UNLESS_BLANK, CRM, None, 11, Outcome.REJECTED),
        (Policy.CRM_UNLESS_BLANK, APP, "x", 11, Outcome.REJECTED),
        (Policy.CRM_UNLESS_BLANK, CRM, "x", 9, Outcome.ACCEPTED),
        (Policy.NEWEST_WINS, APP, None, 11, Outcome.UNCHANGED),  # wins, but a blank does not overwrite
        (Policy.CRM_WINS, CRM, "t", 11, Outcome.ECHO),  # the value we are writing there
    ],
)
def test_conflict_rows_spelled_out(policy: Policy, side: Side, value: Value, at: int, outcome: Outcome) -> None:
    state = synced("t", side.other, 10).with_pending(side, (edit("t", side.other, 10),))

    d = observe(FieldRule(policy), state, side, value, t(at), from_duplex=False)

    assert d.outcome is outcome
    assert d.writes == (
        {side.other: edit(value, side, at), side: edit(value, side, at)} if outcome is Outcome.ACCEPTED else {}
    )
    assert d.state.truth == (edit(value, side, at) if outcome is Outcome.ACCEPTED else edit("t", side.other, 10))


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


def test_a_favoured_side_blanking_after_winning_reopens_the_conflict() -> None:
    # app_unless_blank, nulls allowed. The app set "b" (t1) then blanked it (t2); Salesforce set "a"
    # (t3) without ever receiving either. The app's final value is blank and concurrent with "a":
    # Salesforce's data wins, whatever the delivery order. Delivered app, app, crm, "a" meets the
    # blank; delivered app, crm, app, "a" first loses to "b", is kept as Salesforce's lost edit,
    # and the blank, concurrent with it too, loses to it.
    rule = FieldRule(Policy.APP_UNLESS_BLANK, allow_nulls=True)
    finals = []
    for order in ([(APP, "b", 1), (APP, None, 2), (CRM, "a", 3)], [(APP, "b", 1), (CRM, "a", 3), (APP, None, 2)]):
        state = FieldState()
        for side, value, at in order:
            state = observe(rule, state, side, value, t(at), from_duplex=False).state
        assert state.truth is not None
        finals.append(state.truth.value)
    assert finals == ["a", "a"]


def test_a_replayed_tagged_echo_never_confirms_a_later_write_of_the_same_value() -> None:
    # Salesforce set "a" (t1), then "b" (t2), then "a" (t3); our writes of "a" and "b" to the app
    # landed the first time, "a" echoed (t4); then "a" went out again. The echo of t4, replayed
    # (under a new event id), must not confirm the new "a", still in flight behind "b".
    state = FieldState()
    for value, at in (("a", 1), ("b", 2)):
        state = observe(BOTH_NEWEST, state, CRM, value, t(at), from_duplex=False).state
    state = observe(BOTH_NEWEST, state, APP, "a", t(4), from_duplex=True).state
    state = observe(BOTH_NEWEST, state, CRM, "a", t(3), from_duplex=False).state
    assert state.pending_app == (edit("b", CRM, 2), edit("a", CRM, 3))

    replayed = observe(BOTH_NEWEST, state, APP, "a", t(4), from_duplex=True)

    assert (replayed.outcome, replayed.writes) == (Outcome.ECHO, {})
    assert replayed.state.pending_app == state.pending_app


UNLESS_BLANK_NULLS = FieldRule(Policy.APP_UNLESS_BLANK, allow_nulls=True)


def salesforce_lost_to_the_app() -> FieldState:
    """app-unless-blank, nulls allowed: the app's "b" (t1) is on its way to Salesforce when
    Salesforce's own "a" (t3) arrives, and loses to it."""
    won = observe(UNLESS_BLANK_NULLS, FieldState(), APP, "b", t(1), from_duplex=False).state
    lost = observe(UNLESS_BLANK_NULLS, won, CRM, "a", t(3), from_duplex=False)
    assert (lost.outcome, lost.state.truth, lost.state.lost) == (Outcome.REJECTED, edit("b", APP, 1), edit("a", CRM, 3))
    return lost.state


def test_a_reversed_conflict_writes_the_lost_edit_wherever_it_is_missing() -> None:
    state = salesforce_lost_to_the_app()

    # Our "b" is still on its way to Salesforce and will overwrite "a" there: "a" goes after it.
    in_flight = observe(UNLESS_BLANK_NULLS, state, APP, None, t(4), from_duplex=False)
    # Our "b" landed after "a" (its tagged echo came later in Salesforce's order): the same.
    landed = observe(UNLESS_BLANK_NULLS, state, CRM, "b", t(5), from_duplex=True).state
    after_landing = observe(UNLESS_BLANK_NULLS, landed, APP, None, t(6), from_duplex=False)
    # Salesforce refused our "b" for good, so it still holds "a": only the app is written.
    refused = roll_back(state, CRM, "b")
    kept = observe(UNLESS_BLANK_NULLS, refused, APP, None, t(4), from_duplex=False)

    a = edit("a", CRM, 3)
    for d in (in_flight, after_landing, kept):
        assert (d.outcome, d.conflict, d.state.truth) == (Outcome.REJECTED, True, a)
    assert in_flight.writes == after_landing.writes == {APP: a, CRM: a}
    assert kept.writes == {APP: a}
    # Now the app's blank is the lost edit, and a redelivery of it changes nothing.
    assert in_flight.state.lost == edit(None, APP, 4)
    again = observe(UNLESS_BLANK_NULLS, in_flight.state, APP, None, t(4), from_duplex=False)
    assert (again.outcome, again.writes, again.state) == (Outcome.DUPLICATE, {}, in_flight.state)


def test_a_lost_edit_is_replaced_by_its_sides_next_edit() -> None:
    state = salesforce_lost_to_the_app()

    again = observe(UNLESS_BLANK_NULLS, state, CRM, "c", t(5), from_duplex=False)
    blank = observe(UNLESS_BLANK_NULLS, again.state, APP, None, t(6), from_duplex=False)

    assert (again.outcome, again.state.lost) == (Outcome.REJECTED, edit("c", CRM, 5))
    assert blank.state.truth == edit("c", CRM, 5)


def test_a_lost_edit_that_reached_the_winning_side_is_not_concurrent_with_its_later_edits() -> None:
    # crm-unless-blank, nulls allowed: the app's "a" (t1) is on its way to Salesforce, where "b" (t2)
    # beats it. Our "a" then lands on Salesforce before a rep blanks the field on top of it (t4).
    rule = FieldRule(Policy.CRM_UNLESS_BLANK, allow_nulls=True)
    sent = observe(rule, FieldState(), APP, "a", t(1), from_duplex=False).state
    beaten = observe(rule, sent, CRM, "b", t(2), from_duplex=False).state
    received = observe(rule, beaten, CRM, "a", t(3), from_duplex=True).state

    on_top = observe(rule, received, CRM, None, t(4), from_duplex=False)
    # Made before our "a" landed, the same blank is concurrent with it, and loses to the app's data.
    concurrent = observe(rule, beaten, CRM, None, t(4), from_duplex=False)

    assert beaten.lost == edit("a", APP, 1)
    assert received.lost is None
    assert (on_top.outcome, on_top.state.truth) == (Outcome.ACCEPTED, edit(None, CRM, 4))
    assert (concurrent.outcome, concurrent.state.truth) == (Outcome.REJECTED, edit("a", APP, 1))


@pytest.mark.parametrize("policy", [Policy.APP_WINS, Policy.CRM_WINS, Policy.NEWEST_WINS])
def test_only_the_unless_blank_policies_ever_reverse_a_conflict(policy: Policy) -> None:
    # Whichever side lost, the winner's later edits (blank or not) win again.
    rule = FieldRule(policy, allow_nulls=True)
    for first, second in ((APP, CRM), (CRM, APP)):
        state = observe(rule, FieldState(), first, "x", t(1), from_duplex=False).state
        state = observe(rule, state, second, "y", t(2), from_duplex=False).state
        assert state.lost is not None
        winner = state.lost.author.other
        for value, at in (("z", 3), (None, 4)):
            d = observe(rule, state, winner, value, t(at), from_duplex=False)
            assert (d.outcome, d.state.truth) == (Outcome.ACCEPTED, edit(value, winner, at))
            state = d.state


def test_a_tagged_echo_no_later_than_the_last_one_confirms_nothing() -> None:
    writes = (edit("a", CRM, 1), edit("b", CRM, 2), edit("a", CRM, 3))
    state = FieldState(truth=edit("a", CRM, 3)).with_pending(APP, writes)

    first = observe(BOTH_NEWEST, state, APP, "a", t(5), from_duplex=True)
    older = observe(BOTH_NEWEST, first.state, APP, "b", t(4), from_duplex=True)
    same = observe(BOTH_NEWEST, first.state, APP, "a", t(5), from_duplex=True)
    # Another value committed at the same instant is not that echo again.
    other = observe(BOTH_NEWEST, first.state, APP, "b", t(5), from_duplex=True)

    assert (first.state.pending_app, first.state.echoed_app) == (writes[1:], edit("a", APP, 5))
    for replay in (older, same):
        assert (replay.outcome, replay.writes, replay.state) == (Outcome.ECHO, {}, first.state)
    assert other.state.pending_app == writes[2:]

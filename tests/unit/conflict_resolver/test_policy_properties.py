"""Properties of the per-field rules, whatever the interleaving of edits, deliveries, write commits
and redeliveries (of edits and of echoes alike):

- both sides converge on the value the field's policy prescribes, computed by an oracle written
  here from the rules' statement, not from policy.py;
- no echo (tagged with Duplex's client, or untagged but carrying a value still being written to
  that side) and no redelivery ever causes a write, and every value Duplex writes is a person's
  edit, never an echo;
- no side is written more often than the other side changed, plus the edits of its own that raced
  a write of ours to it (each needs at most one write to set that side right).

The world is simulated: each side has its actual value and a FIFO of changes in its own commit
order (as CDC and app-changes deliver them); Duplex's writes are FIFO per side and commit later,
coming back as echoes tagged with Duplex's client. People only make changes (a value different from
what their side holds), as change streams only report those.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.change import ChangeKind, Side
from services.common.tenant_config import ConflictPolicy as Policy
from services.common.tenant_config import Direction, ObjectPair
from services.common.values import Value, is_blank, same_value
from services.conflict_resolver.policy import (
    Decision,
    Edit,
    FieldRule,
    FieldState,
    may_write,
    observe,
    roll_back,
)
from services.conflict_resolver.resolve import (
    CrmWrite,
    FieldChange,
    FieldRecord,
    LinkState,
    MappedChange,
    Operation,
    Resolution,
    resolve,
    settle_rejected,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP, CRM = Side.APP, Side.CRM


@dataclass
class Person:
    """A person's edit on one side, and what that side had received from Duplex before it."""

    edit: Edit
    received: frozenset[Edit]
    raced: bool = False  # delivered while a write of ours to its side was still unconfirmed
    echo: bool = False  # carries a value still being written to its side: an echo by definition


@dataclass
class Delivery:
    value: Value
    at: datetime
    from_duplex: bool
    person: Person | None = None


@dataclass
class World:
    rule: FieldRule
    clock: int = 0
    actual: dict[Side, Value] = field(default_factory=lambda: {APP: None, CRM: None})
    to_resolver: dict[Side, deque[Delivery]] = field(default_factory=lambda: {s: deque() for s in Side})
    delivered: dict[Side, list[Delivery]] = field(default_factory=lambda: {s: [] for s in Side})
    in_flight: dict[Side, deque[Edit]] = field(default_factory=lambda: {s: deque() for s in Side})
    # Writes of ours whose tagged echo has not been delivered yet, oldest first.
    unconfirmed: dict[Side, list[Edit]] = field(default_factory=lambda: {s: [] for s in Side})
    received: dict[Side, set[Edit]] = field(default_factory=lambda: {s: set() for s in Side})
    state: FieldState = field(default_factory=FieldState)
    people: dict[Side, list[Person]] = field(default_factory=lambda: {s: [] for s in Side})
    writes: dict[Side, list[Edit]] = field(default_factory=lambda: {s: [] for s in Side})
    echoes: dict[Side, list[Delivery]] = field(default_factory=lambda: {s: [] for s in Side})

    def tick(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def edit(self, side: Side, value: Value) -> None:
        if same_value(self.actual[side], value):
            return  # not a change: no change event
        at = self.tick()
        self.actual[side] = value
        person = Person(Edit(value, side, at), frozenset(self.received[side]))
        self.people[side].append(person)
        self.to_resolver[side].append(Delivery(value, at, from_duplex=False, person=person))

    def deliver(self, side: Side) -> None:
        if not self.to_resolver[side]:
            return
        delivery = self.to_resolver[side].popleft()
        person = delivery.person
        if delivery.from_duplex:
            confirmed = self.unconfirmed[side].pop(0)
            assert same_value(confirmed.value, delivery.value)
        elif person is not None:
            person.raced = bool(self.unconfirmed[side])
            person.echo = any(same_value(w.value, delivery.value) for w in self.unconfirmed[side])
        self.delivered[side].append(delivery)
        decision = self._observe(side, delivery)
        if delivery.from_duplex or (person is not None and person.echo):
            self.echoes[side].append(delivery)
            assert decision.writes == {}, f"an echo caused a write: {decision}"

    def redeliver(self, side: Side, index: int) -> None:
        # Replays and re-reads deliver changes again, echoes included, under new event ids; a tagged
        # echo replayed while a write of the same value is in flight there must not confirm it.
        delivered = self.delivered[side]
        if delivered:
            decision = self._observe(side, delivered[index % len(delivered)])
            assert decision.writes == {}, f"a redelivery caused a write: {decision}"

    def commit(self, side: Side) -> None:
        if not self.in_flight[side]:
            return
        write = self.in_flight[side].popleft()
        self.actual[side] = write.value
        self.received[side].add(write)
        self.to_resolver[side].append(Delivery(write.value, self.tick(), from_duplex=True))

    def _observe(self, side: Side, delivery: Delivery) -> Decision:
        decision = observe(self.rule, self.state, side, delivery.value, delivery.at, from_duplex=delivery.from_duplex)
        self.state = decision.state
        for target, write in decision.writes.items():
            assert may_write(self.rule.direction, target)
            self.in_flight[target].append(write)
            self.unconfirmed[target].append(write)
            self.writes[target].append(write)
        return decision

    def settle(self) -> None:
        """Deliver and commit everything (bounded: no ping-pong)."""
        steps = 0
        while any(self.to_resolver[s] or self.in_flight[s] for s in Side):
            for side in Side:
                self.deliver(side)
                self.commit(side)
            steps += 1
            assert steps < 500, "Duplex keeps writing: a flip-flop"

    def genuine(self, side: Side) -> list[Person]:
        return [p for p in self.people[side] if not p.echo]


def winner(policy: Policy, app: Edit, crm: Edit) -> Edit:
    """The oracle's conflict rule, as the spec states it."""
    if policy is Policy.APP_WINS:
        return app
    if policy is Policy.CRM_WINS:
        return crm
    if policy is Policy.NEWEST_WINS:
        return app if app.at > crm.at else crm  # a tie goes to Salesforce
    if policy is Policy.APP_UNLESS_BLANK:
        return crm if is_blank(app.value) else app
    return app if is_blank(crm.value) else crm


def prescribed(policy: Policy, app: list[Person], crm: list[Person]) -> Edit | None:
    """The edit both sides must end on, from the people's genuine edits on each side: each side's
    last one; if one was made after its side had received the other, it was made on top of it and
    stands; otherwise they were concurrent and the policy decides."""
    last_app, last_crm = (ps[-1] if (ps := [p for p in people if not p.echo]) else None for people in (app, crm))
    if last_app is None or last_crm is None:
        only = last_app or last_crm
        return only.edit if only is not None else None
    if last_crm.edit in last_app.received:
        return last_app.edit
    if last_app.edit in last_crm.received:
        return last_crm.edit
    return winner(policy, last_app.edit, last_crm.edit)


def field_prescribed(world: World) -> Edit | None:
    return prescribed(world.rule.policy, world.people[APP], world.people[CRM])


sides = st.sampled_from(list(Side))
VALUES = ["a", "b", "c", "d"]
BLANKS = ["a", "b", None, ""]


def actions(values: Sequence[Value]) -> st.SearchStrategy[tuple[str, Side, object]]:
    return st.one_of(
        st.tuples(st.just("edit"), sides, st.sampled_from(values)),
        st.tuples(st.just("deliver"), sides, st.just(0)),
        st.tuples(st.just("commit"), sides, st.just(0)),
        st.tuples(st.just("redeliver"), sides, st.integers(0, 7)),
    )


def run(rule: FieldRule, script: list[tuple[str, Side, object]]) -> World:
    world = World(rule)
    for action, side, arg in script:
        if action == "edit":
            world.edit(side, arg)  # type: ignore[arg-type]
        elif action == "deliver":
            world.deliver(side)
        elif action == "commit":
            world.commit(side)
        else:
            world.redeliver(side, arg)  # type: ignore[arg-type]
    world.settle()
    return world


def check_writes(world: World) -> None:
    genuine = {p.edit for s in Side for p in world.genuine(s)}
    for side in Side:
        # Every write carries a person's genuine edit: never an echo, never a made-up value.
        assert set(world.writes[side]) <= genuine
        # In particular no value seen as an echo from a side goes back out as that side's edit.
        echoed = {Edit(d.value, side, d.at) for d in world.echoes[side]}
        assert not echoed & {w for s in Side for w in world.writes[s]}
        # Written no more often than the other side changed, plus this side's own edits that raced
        # a write of ours (a lost conflict is restored, a won one written back after our write).
        bound = len(world.genuine(side.other)) + sum(p.raced for p in world.genuine(side))
        assert len(world.writes[side]) <= bound, (world.writes[side], bound)


UNLESS_BLANK = {Policy.APP_UNLESS_BLANK, Policy.CRM_UNLESS_BLANK}
POLICY_SETTINGS = settings(max_examples=250, deadline=None)


@POLICY_SETTINGS
@given(policy=st.sampled_from(list(Policy)), script=st.lists(actions(VALUES), max_size=40))
def test_both_sides_converge_on_the_value_the_policy_prescribes(
    policy: Policy, script: list[tuple[str, Side, object]]
) -> None:
    world = run(FieldRule(policy), script)

    expected = field_prescribed(world)
    if expected is not None:
        assert world.actual == {APP: expected.value, CRM: expected.value}
        assert same_value(world.state.truth.value if world.state.truth else None, expected.value)
    assert world.state.pending_app == world.state.pending_crm == ()
    check_writes(world)


@POLICY_SETTINGS
@given(policy=st.sampled_from(list(Policy)), script=st.lists(actions(BLANKS), max_size=40))
def test_with_nulls_allowed_blanks_are_values_and_converge_as_prescribed(
    policy: Policy, script: list[tuple[str, Side, object]]
) -> None:
    world = run(FieldRule(policy, allow_nulls=True), script)

    expected = field_prescribed(world)
    if expected is not None:
        assert same_value(world.actual[APP], world.actual[CRM])
        assert same_value(world.actual[APP], expected.value), (world.actual, expected)
    check_writes(world)


@POLICY_SETTINGS
@given(policy=st.sampled_from(list(Policy)), script=st.lists(actions(BLANKS), max_size=40))
def test_blanks_never_overwrite_data_unless_allowed(policy: Policy, script: list[tuple[str, Side, object]]) -> None:
    world = run(FieldRule(policy), script)

    for side in Side:
        assert not any(is_blank(w.value) for w in world.writes[side])
    check_writes(world)
    # Data wins over blanks: when the prescribed edit is data, every side holding data holds it.
    # Not checked for the unless-blank policies: without nulls a blank does not become the truth,
    # so the favoured side's earlier data still decides a conflict its blank should have ceded (app
    # "a", then blank, both before Salesforce's "b": Salesforce ends on "a", the oracle says "b").
    expected = field_prescribed(world)
    if expected is not None and not is_blank(expected.value) and policy not in UNLESS_BLANK:
        holding = [s for s in Side if not is_blank(world.actual[s])]
        assert all(same_value(world.actual[s], expected.value) for s in holding) or not holding


@POLICY_SETTINGS
@given(
    direction=st.sampled_from([Direction.APP_TO_CRM, Direction.CRM_TO_APP]),
    policy=st.sampled_from(list(Policy)),
    script=st.lists(actions(VALUES), max_size=40),
)
def test_one_way_fields_are_only_written_downstream(
    direction: Direction, policy: Policy, script: list[tuple[str, Side, object]]
) -> None:
    world = run(FieldRule(policy, direction), script)

    upstream = CRM if direction is Direction.CRM_TO_APP else APP
    assert world.writes[upstream] == []
    check_writes(world)


# The same properties one level up, through resolve(): record changes carrying one or more fields
# with different policies, deletes on either side (propagated, or ignored: then the side that kept
# its record must never be written into the deleted one), writes refused by a side whose record is
# gone, and redeliveries of every change, echoes and deletes included.

CLIENT = "duplex-acme"
FIELDS = {"name": "Name", "status": "Status__c", "notes": "Description"}
PAIR_DOC: dict[str, object] = {
    "name": "partners",
    "app": {"object": "partners"},
    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
    "conflictPolicy": "newest_wins",
    "deletePolicy": "propagate",
    "fields": [
        {"app": "name", "salesforce": "Name"},
        {"app": "status", "salesforce": "Status__c", "conflictPolicy": "app_wins"},
        {"app": "notes", "salesforce": "Description", "conflictPolicy": "crm_unless_blank"},
    ],
}
PAIRS = {p: ObjectPair.model_validate({**PAIR_DOC, "deletePolicy": p}) for p in ("propagate", "ignore")}


@dataclass
class Sent:
    """A change as the side's stream delivers it, with the people behind its field values."""

    change: MappedChange
    people: dict[str, Person]


@dataclass
class Write:
    delete: bool
    edits: dict[str, Edit]
    pending: dict[str, Value]


@dataclass
class RecordWorld:
    pair: ObjectPair = PAIRS["propagate"]
    clock: int = 0
    events: int = 0
    actual: dict[Side, dict[str, Value]] = field(default_factory=lambda: {s: dict.fromkeys(FIELDS) for s in Side})
    deleted: dict[Side, bool] = field(default_factory=lambda: dict.fromkeys(Side, False))
    to_resolver: dict[Side, deque[Sent]] = field(default_factory=lambda: {s: deque() for s in Side})
    delivered: dict[Side, list[Sent]] = field(default_factory=lambda: {s: [] for s in Side})
    in_flight: dict[Side, deque[Write]] = field(default_factory=lambda: {s: deque() for s in Side})
    unconfirmed: dict[Side, dict[str, list[Edit]]] = field(
        default_factory=lambda: {s: {f: [] for f in FIELDS} for s in Side}
    )
    received: dict[Side, dict[str, set[Edit]]] = field(
        default_factory=lambda: {s: {f: set() for f in FIELDS} for s in Side}
    )
    link: LinkState = field(
        default_factory=lambda: LinkState("L1", "partners", "dx-L1", app_record_id="a1", crm_record_id="001A")
    )
    fields: dict[str, FieldRecord] = field(default_factory=dict)
    people: dict[Side, dict[str, list[Person]]] = field(
        default_factory=lambda: {s: {f: [] for f in FIELDS} for s in Side}
    )
    writes: dict[Side, dict[str, list[Edit]]] = field(
        default_factory=lambda: {s: {f: [] for f in FIELDS} for s in Side}
    )
    refused: dict[Side, dict[str, int]] = field(default_factory=lambda: {s: dict.fromkeys(FIELDS, 0) for s in Side})

    def tick(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def mapped(self, side: Side, kind: ChangeKind, values: dict[str, Value], *, ours: bool) -> MappedChange:
        self.events += 1
        return MappedChange(
            event_id=f"e{self.events}",
            tenant_id="acme",
            link_id="L1",
            object_pair="partners",
            mapping_version=1,
            side=side,
            kind=kind,
            fields=tuple(FieldChange(f, FIELDS[f], v, v) for f, v in values.items()),
            at=self.tick(),
            origin_client=CLIENT if ours else "",
        )

    def edit(self, side: Side, values: dict[str, Value]) -> None:
        changed = {f: v for f, v in values.items() if not same_value(self.actual[side][f], v)}
        if self.deleted[side] or not changed:
            return
        change = self.mapped(side, ChangeKind.UPDATE, changed, ours=False)
        people = {f: Person(Edit(v, side, change.at), frozenset(self.received[side][f])) for f, v in changed.items()}
        self.actual[side].update(changed)
        for f, person in people.items():
            self.people[side][f].append(person)
        self.to_resolver[side].append(Sent(change, people))

    def delete(self, side: Side, *, ours: bool = False) -> None:
        if not self.deleted[side]:
            self.deleted[side] = True
            self.to_resolver[side].append(Sent(self.mapped(side, ChangeKind.DELETE, {}, ours=ours), {}))

    def deliver(self, side: Side) -> None:
        if not self.to_resolver[side]:
            return
        sent = self.to_resolver[side].popleft()
        change = sent.change
        ours = bool(change.origin_client)
        for f in (c.app_field for c in change.fields):
            if ours:
                assert same_value(self.unconfirmed[side][f].pop(0).value, dict(self.values(change))[f])
            else:
                person = sent.people[f]
                person.raced = bool(self.unconfirmed[side][f])
                person.echo = any(same_value(w.value, person.edit.value) for w in self.unconfirmed[side][f])
        self.delivered[side].append(sent)
        r = self._resolve(change)
        if ours or (sent.people and all(p.echo for p in sent.people.values())):
            assert (r.crm_write, r.app_update) == (None, None), f"an echo caused a write: {r}"
            assert r.echo is not None, "an echo was not counted"

    @staticmethod
    def values(change: MappedChange) -> dict[str, Value]:
        return {c.app_field: c.app_value for c in change.fields}

    def redeliver(self, side: Side, index: int) -> None:
        delivered = self.delivered[side]
        if delivered:
            sent = delivered[index % len(delivered)]
            r = self._resolve(replace(sent.change, event_id=f"{sent.change.event_id}-again"))
            assert (r.crm_write, r.app_update) == (None, None), f"a redelivery caused a write: {r}"

    def _resolve(self, change: MappedChange) -> Resolution:
        r = resolve(self.pair, CLIENT, self.link, self.fields, change)
        self.link, self.fields = r.link, {**self.fields, **r.fields}
        for target, write in ((CRM, r.crm_write), (APP, r.app_update)):
            if write is None:
                continue
            if (
                (write.operation is Operation.DELETE)
                if isinstance(write, CrmWrite)
                else write.kind is ChangeKind.DELETE
            ):
                self.in_flight[target].append(Write(True, {}, {}))
                continue
            assert not self.link.deleted(target), "a field write to a record deleted there"
            names = dict(write.pending) if isinstance(write, CrmWrite) else dict(write.fields)
            edits = {f: self.fields[f].state.pending(target)[-1] for f in names}
            for f, e in edits.items():
                self.unconfirmed[target][f].append(e)
                self.writes[target][f].append(e)
            self.in_flight[target].append(Write(False, edits, names))
        return r

    def commit(self, side: Side) -> None:
        if not self.in_flight[side]:
            return
        write = self.in_flight[side].popleft()
        if write.delete:
            self.delete(side, ours=True)
            return
        if self.deleted[side]:
            # The side refuses a write to a record deleted there: it will never echo.
            for f, e in write.edits.items():
                self.unconfirmed[side][f].remove(e)
                self.refused[side][f] += 1
            if side is CRM:
                self.fields = {**self.fields, **settle_rejected(self.fields, write.pending)}
            else:
                self.fields = {
                    f: replace(rec, state=roll_back(rec.state, APP, write.pending[f])) if f in write.pending else rec
                    for f, rec in self.fields.items()
                }
            return
        values = {f: e.value for f, e in write.edits.items()}
        self.actual[side].update(values)
        for f, e in write.edits.items():
            self.received[side][f].add(e)
        self.to_resolver[side].append(Sent(self.mapped(side, ChangeKind.UPDATE, values, ours=True), {}))

    def settle(self) -> None:
        steps = 0
        while any(self.to_resolver[s] or self.in_flight[s] for s in Side):
            for side in Side:
                self.deliver(side)
                self.commit(side)
            steps += 1
            assert steps < 500, "Duplex keeps writing: a flip-flop"


field_values = st.dictionaries(st.sampled_from(list(FIELDS)), st.sampled_from(["a", "b", "c"]), min_size=1)
record_actions = st.one_of(
    st.tuples(st.just("edit"), sides, field_values),
    st.tuples(st.just("deliver"), sides, st.just(0)),
    st.tuples(st.just("commit"), sides, st.just(0)),
    st.tuples(st.just("redeliver"), sides, st.integers(0, 7)),
)


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(record_actions, max_size=35),
    delete=st.one_of(st.none(), st.tuples(sides, st.integers(0, 35))),
    delete_policy=st.sampled_from(list(PAIRS)),
)
def test_records_converge_through_resolve_with_echoes_redeliveries_and_deletes(
    script: list[tuple[str, Side, object]], delete: tuple[Side, int] | None, delete_policy: str
) -> None:
    world = RecordWorld(PAIRS[delete_policy])
    for i, (action, side, arg) in enumerate(script):
        if delete is not None and i == delete[1]:
            world.delete(delete[0])
        if action == "edit":
            world.edit(side, arg)  # type: ignore[arg-type]
        elif action == "deliver":
            world.deliver(side)
        elif action == "commit":
            world.commit(side)
        else:
            world.redeliver(side, arg)  # type: ignore[arg-type]
    if delete is not None and delete[1] >= len(script):
        world.delete(delete[0])
    world.settle()

    if delete is not None and delete_policy == "propagate":
        # Propagated both ways: the record is gone on both sides, and nothing resurrected it.
        assert world.deleted == {APP: True, CRM: True}
        assert world.link.app_deleted
        assert world.link.crm_deleted
    elif delete is not None:
        assert world.deleted == {delete[0]: True, delete[0].other: False}
        assert (world.link.deleted(delete[0]), world.link.deleted(delete[0].other)) == (True, False)
    for f in FIELDS:
        policy = world.pair.conflict_policy_of(world.pair.field_by_app(f))  # type: ignore[arg-type]
        genuine = {p.edit for s in Side for p in world.people[s][f] if not p.echo}
        for side in Side:
            assert set(world.writes[side][f]) <= genuine
            ours = [p for p in world.people[side.other][f] if not p.echo]
            raced = [p for p in world.people[side][f] if not p.echo and p.raced]
            # A write the side refused (its record was gone) may be followed by one more.
            assert len(world.writes[side][f]) <= len(ours) + len(raced) + world.refused[side][f]
        if delete is None:
            expected = prescribed(policy, world.people[APP][f], world.people[CRM][f])
            if expected is not None:
                assert (world.actual[APP][f], world.actual[CRM][f]) == (expected.value, expected.value), f
            state = world.fields[f].state if f in world.fields else FieldState()
            assert state.pending_app == state.pending_crm == (), f

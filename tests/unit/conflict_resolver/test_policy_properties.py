"""Property: whatever the interleaving of edits, deliveries, write commits and redeliveries,
both sides converge, newest-wins ends on the newest edit, no echo ever causes a write, and no
edit causes more than one write per side.

The world is simulated: each side has its actual value and a FIFO of changes in its own commit
order (as CDC and app-changes deliver them); Duplex's writes are FIFO per side and commit later,
coming back as echoes tagged with Duplex's client.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.change import Side
from services.common.tenant_config import ConflictPolicy as Policy
from services.common.tenant_config import Direction
from services.common.values import Value, is_blank
from services.conflict_resolver.policy import (
    Decision,
    Edit,
    FieldRule,
    FieldState,
    Outcome,
    may_write,
    observe,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Delivery:
    value: Value
    at: datetime
    from_duplex: bool


@dataclass
class World:
    rule: FieldRule
    clock: int = 0
    actual: dict[Side, Value] = field(default_factory=lambda: {Side.APP: None, Side.CRM: None})
    to_resolver: dict[Side, deque[Delivery]] = field(default_factory=lambda: {s: deque() for s in Side})
    delivered: dict[Side, list[Delivery]] = field(default_factory=lambda: {s: [] for s in Side})
    in_flight: dict[Side, deque[Edit]] = field(default_factory=lambda: {s: deque() for s in Side})
    state: FieldState = field(default_factory=FieldState)
    edits: list[Edit] = field(default_factory=list)
    writes: dict[Side, list[Edit]] = field(default_factory=lambda: {s: [] for s in Side})

    def tick(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def edit(self, side: Side, value: Value) -> None:
        at = self.tick()
        self.actual[side] = value
        self.to_resolver[side].append(Delivery(value, at, from_duplex=False))
        self.edits.append(Edit(value, side, at))

    def deliver(self, side: Side) -> None:
        if not self.to_resolver[side]:
            return
        delivery = self.to_resolver[side].popleft()
        self.delivered[side].append(delivery)
        self._observe(side, delivery)

    def redeliver(self, side: Side, index: int) -> None:
        # Kafka redelivers genuine edits after a crash; echoes are deduplicated by event id first.
        genuine = [d for d in self.delivered[side] if not d.from_duplex]
        if genuine:
            decision = self._observe(side, genuine[index % len(genuine)])
            assert decision.writes == {}, decision

    def commit(self, side: Side) -> None:
        if not self.in_flight[side]:
            return
        write = self.in_flight[side].popleft()
        self.actual[side] = write.value
        self.to_resolver[side].append(Delivery(write.value, self.tick(), from_duplex=True))

    def _observe(self, side: Side, delivery: Delivery) -> Decision:
        decision = observe(self.rule, self.state, side, delivery.value, delivery.at, from_duplex=delivery.from_duplex)
        if decision.outcome is Outcome.ECHO:
            assert decision.writes == {}, "an echo caused a write"
        assert len(decision.writes) <= 2
        self.state = decision.state
        for target, write in decision.writes.items():
            assert may_write(self.rule.direction, target)
            self.in_flight[target].append(write)
            self.writes[target].append(write)
        return decision

    def settle(self) -> int:
        """Deliver and commit everything; returns the steps it took (bounded: no ping-pong)."""
        steps = 0
        while any(self.to_resolver[s] or self.in_flight[s] for s in Side):
            for side in Side:
                self.deliver(side)
                self.commit(side)
            steps += 1
            assert steps < 500, "Duplex keeps writing: a flip-flop"
        return steps


sides = st.sampled_from(list(Side))
actions = st.one_of(
    st.tuples(st.just("edit"), sides, st.sampled_from(["a", "b", "c", "d"])),
    st.tuples(st.just("deliver"), sides, st.just(0)),
    st.tuples(st.just("commit"), sides, st.just(0)),
    st.tuples(st.just("redeliver"), sides, st.integers(0, 5)),
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


@settings(max_examples=400, deadline=None)
@given(policy=st.sampled_from(list(Policy)), script=st.lists(actions, max_size=40))
def test_both_sides_converge_on_an_edited_value(policy: Policy, script: list[tuple[str, Side, object]]) -> None:
    world = run(FieldRule(policy), script)

    if world.edits:
        assert world.actual[Side.APP] == world.actual[Side.CRM]
        assert world.actual[Side.APP] in {e.value for e in world.edits}


@settings(max_examples=400, deadline=None)
@given(script=st.lists(actions, max_size=40))
def test_newest_wins_ends_on_the_newest_edit(script: list[tuple[str, Side, object]]) -> None:
    world = run(FieldRule(Policy.NEWEST_WINS), script)

    if world.edits:
        newest = max(world.edits, key=lambda e: e.at)
        assert world.actual == {Side.APP: newest.value, Side.CRM: newest.value}


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from(list(Policy)), script=st.lists(actions, max_size=40))
def test_no_side_is_written_more_often_than_fields_changed(
    policy: Policy, script: list[tuple[str, Side, object]]
) -> None:
    world = run(FieldRule(policy), script)

    for side in Side:
        assert len(world.writes[side]) <= len(world.edits)
        # Every value Duplex writes was authored by a person on some side.
        assert {w.value for w in world.writes[side]} <= {e.value for e in world.edits}


@settings(max_examples=300, deadline=None)
@given(
    direction=st.sampled_from([Direction.APP_TO_CRM, Direction.CRM_TO_APP]),
    script=st.lists(actions, max_size=40),
)
def test_one_way_fields_are_only_written_downstream(
    direction: Direction, script: list[tuple[str, Side, object]]
) -> None:
    world = run(FieldRule(Policy.NEWEST_WINS, direction), script)

    upstream = Side.CRM if direction is Direction.CRM_TO_APP else Side.APP
    assert world.writes[upstream] == []


blank_actions = st.one_of(
    st.tuples(st.just("edit"), sides, st.sampled_from(["a", "b", None, ""])),
    st.tuples(st.just("deliver"), sides, st.just(0)),
    st.tuples(st.just("commit"), sides, st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from(list(Policy)), script=st.lists(blank_actions, max_size=40))
def test_blanks_never_overwrite_data_unless_allowed(policy: Policy, script: list[tuple[str, Side, object]]) -> None:
    world = run(FieldRule(policy), script)

    for side in Side:
        assert not any(is_blank(w.value) for w in world.writes[side])


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from(list(Policy)), script=st.lists(blank_actions, max_size=40))
def test_with_nulls_allowed_blanks_converge_too(policy: Policy, script: list[tuple[str, Side, object]]) -> None:
    world = run(FieldRule(policy, allow_nulls=True), script)

    if world.edits:
        app, crm = world.actual[Side.APP], world.actual[Side.CRM]
        assert app == crm or (is_blank(app) and is_blank(crm))

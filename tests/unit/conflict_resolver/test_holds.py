"""What a pause holds (services.conflict_resolver.store.holds_of) and the resolver's two ways of
holding over an in-memory store: a pair paused both ways keeps its changes undecided, while write
outcomes still settle; one paused way keeps only that way's outputs.

The same against PostgreSQL, with releases, races and redeliveries: tests/integration/conflict_resolver/test_holding.py.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from duplex.change.v1 import record_changed_pb2

from services.common.change import Side
from services.common.pauses import EVERY_PAIR, Way, stopped
from services.conflict_resolver.resolve import LinkState
from services.conflict_resolver.store import Holds, holds_of
from tests.unit.conflict_resolver.test_resolver_handlers import TENANT, World, mapped, settled

pytestmark = pytest.mark.unit

A = ("acme", "partners")
B = ("acme", "contacts")


def test_a_pair_paused_both_ways_holds_its_changes_and_one_paused_way_only_its_outputs() -> None:
    assert stopped([Way.TO_CRM, Way.TO_APP])
    assert not stopped([Way.TO_APP])
    assert not stopped([])
    paused = {(*A, Way.TO_CRM), (*A, Way.TO_APP), (*B, Way.TO_APP)}
    assert holds_of(paused, set(), set()) == Holds(inputs=frozenset({A}), outputs=frozenset(paused))


def test_a_pair_still_releasing_holds_what_comes_after_even_resumed() -> None:
    # Changes held: later changes queue behind them, whatever is paused now.
    assert holds_of(set(), {B}, set()) == Holds(inputs=frozenset({B}))
    # Outputs held one way: later outputs of that way queue behind them; changes are decided.
    assert holds_of({(*A, Way.TO_APP)}, set(), {(*A, Way.TO_CRM)}) == Holds(
        outputs=frozenset({(*A, Way.TO_APP), (*A, Way.TO_CRM)})
    )
    assert holds_of(set(), set(), set()) == Holds()


async def test_a_stopped_pairs_changes_wait_undecided_while_outcomes_of_earlier_writes_settle() -> None:
    world = World(LinkState("L1", "partners", "dx-L1", app_record_id="app-L1"))
    create = mapped("c1", {"name": "n0"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    assert await world.resolver.on_mapped_batch([create]) == {}
    (upsert,) = world.commands()

    # Paused both ways by a tenant-wide pause of one way and a pause of the pair the other way.
    world.store.tables.pauses |= {(TENANT, EVERY_PAIR, Way.TO_APP), (TENANT, "partners", Way.TO_CRM)}
    edits = [mapped("u1", {"name": "v1"}, at=10), mapped("s1", {"phone": "2"}, at=11, side=Side.CRM)]
    logged = len(world.store.tables.log)
    fields = {name: record.state for name, record in world.store.tables.fields[(TENANT, "L1")].items()}
    assert await world.resolver.on_mapped_batch(edits) == {}
    assert [h[1] for h in world.store.tables.held_inputs.values()] == ["u1", "s1"]
    assert {name: record.state for name, record in world.store.tables.fields[(TENANT, "L1")].items()} == fields
    assert len(world.store.tables.log) == logged
    assert (TENANT, "u1") not in world.store.tables.processed

    # The write sent before the pause settles now: the held changes, decided later, know the record.
    assert await world.resolver.on_settled_batch([settled(upsert, record_id="001L1", created=True)]) == {}
    assert world.store.link(TENANT, "L1").crm_record_id == "001L1"

    # Resumed the Salesforce way: decided in order; the app way, still paused, holds its update.
    world.store.tables.pauses.discard((TENANT, "partners", Way.TO_CRM))
    assert await world.resolver.release_held(TENANT, "partners", 1) == 2
    assert world.store.tables.held_inputs == {}
    (_, update) = world.commands()
    assert update.records[0].record_id == "001L1"
    assert [hold for hold, _, _ in world.store.tables.held] == [(TENANT, "partners", Way.TO_APP)]
    assert [row["detail"]["source_event_id"] for row in world.log("change.resolved")] == ["c1", "u1", "s1"]


async def test_a_held_change_is_checked_on_arrival_but_for_its_values_which_are_checked_when_decided() -> None:
    world = World(LinkState("L1", "partners", "dx-L1", app_record_id="app-L1", crm_record_id="001L1"))
    world.store.tables.pauses |= {(TENANT, "partners", Way.TO_CRM), (TENANT, "partners", Way.TO_APP)}
    no_link = mapped("bad-1", {"name": "x"}, at=1, link="")
    nul_link = mapped("bad-2", {"name": "x"}, at=1, link="L\x002")
    snan = mapped("bad-3", {"name": Decimal("sNaN")}, at=2)
    good = mapped("good", {"name": "fine"}, at=3)
    refused = await world.resolver.on_mapped_batch([no_link, nul_link, snan, good])
    # Refused on arrival as unpaused (dead-lettered); the value is not read until decided.
    assert sorted(refused) == [0, 1]
    assert [h[1] for h in world.store.tables.held_inputs.values()] == ["bad-3", "good"]

    world.store.tables.pauses.clear()
    assert await world.resolver.release_held(TENANT, "partners", 10) == 2
    assert world.store.tables.held_inputs == {}
    (update,) = world.commands()
    assert update.records[0].fields["Name"].string_value == "fine"
    # The unstorable link on arrival; the signaling NaN on release, in the sync log.
    rejected = world.log("change.rejected")
    assert [row["code"] for row in rejected] == ["UNSTORABLE_TEXT", "INCOMPARABLE_VALUE"]
    assert rejected[1]["link"] == "L1"

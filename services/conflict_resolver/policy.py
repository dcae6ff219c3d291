"""Per-field conflict resolution: pure functions over one field's state, no I/O.

For every link and field the resolver keeps a :class:`FieldState`:

- ``truth``: the value Duplex last decided both sides should hold, with the side that authored
  it and the origin commit time of that edit;
- ``pending``: per side, the value Duplex has asked that side to write and not yet seen back;
- ``seen``: per side, the last genuine (non-echo) edit observed from it, to spot stale and
  duplicate deliveries;
- ``lost``: the last edit of the side that lost the field's latest conflict, until that side edits
  again;
- ``echoed``: per side, the last tagged echo of ours it reported, to tell a replayed echo from a
  later write of the same value landing.

A genuine edit from side S proposes a new truth. It is a *conflict* only when S edited without
having received the current truth, which is exactly when a write of that truth to S is still
pending. Otherwise S edited on top of the truth and simply wins. Conflicts are settled by the
field's policy. An echo (Duplex's own write coming back: tagged with Duplex's origin client, or
untagged but carrying the value of any write still pending to that side) never causes a write
and changes no truth, so Duplex cannot argue with itself; only a tagged echo confirms (pops) the
pending write, and only one later than the side's last tagged echo: a side reports its commits in
order, so an earlier or identical one is a replay (re-read, re-published under a new event id).

A conflict's loser is not forgotten. The winning side never received the losing edit, so its own
later edits are concurrent with it too, and each is decided against it by the policy again. Only
the unless-blank policies can reverse: an app that wins under app-unless-blank and then blanks the
field (nulls allowed) loses to Salesforce's data after all, whichever order the three edits arrive
in. The reversed conflict's winner is written to the side that just edited, and back to its own
side if a write of ours landed there (or is on its way) since it was made.

Further rules, for every policy:
- a blank (null, empty string, empty multi-value) never overwrites data unless the mapping
  allows nulls; the side that holds data keeps it;
- a field's direction limits which side Duplex may write;
- a side is written only when the value it will hold differs from the truth.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from services.common.change import Side
from services.common.tenant_config import ConflictPolicy as Policy
from services.common.tenant_config import Direction
from services.common.values import Value, is_blank, same_value


def may_write(direction: Direction, side: Side) -> bool:
    """Whether a field with this direction may be written by Duplex on ``side``."""
    return direction.to_crm if side is Side.CRM else direction.to_app


@dataclass(frozen=True)
class FieldRule:
    policy: Policy
    direction: Direction = Direction.BOTH
    allow_nulls: bool = False


@dataclass(frozen=True)
class Edit:
    """A value, the side that authored it and the origin commit time of that edit."""

    value: Value
    author: Side
    at: datetime


@dataclass(frozen=True)
class FieldState:
    truth: Edit | None = None
    # Writes in flight per side, oldest first: a record's writes land in the order they were sent.
    pending_app: tuple[Edit, ...] = ()
    pending_crm: tuple[Edit, ...] = ()
    seen_app: Edit | None = None
    seen_crm: Edit | None = None
    # Per side, the last write of ours that side confirmed (its tagged echo came back): a record
    # read back later may still show it, and must not be taken for someone's edit.
    written_app: Edit | None = None
    written_crm: Edit | None = None
    # The last edit of the side that lost the latest conflict, until that side edits again or our
    # write of it lands on the other side. Never by the truth's author.
    lost: Edit | None = None
    # Per side, the last tagged echo it reported (value, that side's commit time).
    echoed_app: Edit | None = None
    echoed_crm: Edit | None = None

    def pending(self, side: Side) -> tuple[Edit, ...]:
        return self.pending_app if side is Side.APP else self.pending_crm

    def seen(self, side: Side) -> Edit | None:
        return self.seen_app if side is Side.APP else self.seen_crm

    def with_pending(self, side: Side, edits: tuple[Edit, ...]) -> FieldState:
        return replace(self, pending_app=edits) if side is Side.APP else replace(self, pending_crm=edits)

    def with_seen(self, side: Side, edit: Edit) -> FieldState:
        return replace(self, seen_app=edit) if side is Side.APP else replace(self, seen_crm=edit)

    def written(self, side: Side) -> Edit | None:
        return self.written_app if side is Side.APP else self.written_crm

    def echoed(self, side: Side) -> Edit | None:
        return self.echoed_app if side is Side.APP else self.echoed_crm

    def with_echoed(self, side: Side, edit: Edit) -> FieldState:
        return replace(self, echoed_app=edit) if side is Side.APP else replace(self, echoed_crm=edit)

    def replayed(self, side: Side, value: Value, at: datetime) -> bool:
        """Whether a tagged echo of ``value`` committed at ``at`` on ``side`` was reported before.

        A side reports its commits in order, so a tagged echo no later than the last one (and not a
        different value committed at the same instant) is that echo, or an older one, again.
        """
        last = self.echoed(side)
        return last is not None and (at < last.at or (at == last.at and same_value(last.value, value)))

    def ours(self, side: Side, value: Value) -> bool:
        """Whether ``value`` is a write of ours to ``side``: in flight, or the last one confirmed."""
        written = self.written(side)
        return any(same_value(e.value, value) for e in (*self.pending(side), *([written] if written else [])))

    def landed(self, side: Side, value: Value) -> FieldState | None:
        """The state after our write of ``value`` landed on ``side``, or None if none is pending.

        The oldest pending write with that value is the one that landed; older ones before it were
        superseded (coalesced by the writer, or their echoes overtaken) and will not echo.
        """
        pending = self.pending(side)
        for i, edit in enumerate(pending):
            if same_value(edit.value, value):
                state = self.with_pending(side, pending[i + 1 :])
                if edit == state.lost:
                    # The lost edit reached ``side`` (it was the truth when we sent it): the side's
                    # later edits are made on top of it, no longer concurrent with it.
                    state = replace(state, lost=None)
                return replace(state, written_app=edit) if side is Side.APP else replace(state, written_crm=edit)
        return None


class Outcome(enum.StrEnum):
    """What an incoming value turned out to be."""

    ECHO = "echo"  # Duplex's own write coming back: confirmed, dropped
    STALE = "stale"  # older than an edit already seen from that side
    DUPLICATE = "duplicate"  # the same edit again (a redelivery)
    UNCHANGED = "unchanged"  # a genuine edit that leaves the truth as it was
    ACCEPTED = "accepted"  # the edit is the new truth
    REJECTED = "rejected"  # the edit lost a conflict; the truth stands


@dataclass(frozen=True)
class Decision:
    """The result of one incoming value, for the sync log and the writers."""

    outcome: Outcome
    state: FieldState
    # Values Duplex must now write, per side (at most one per side per incoming edit).
    writes: dict[Side, Edit]
    reason: str
    conflict: bool = False


# When two edits carry the same origin commit time, Salesforce's wins: its timestamps are the
# org's own commit clock, and the org is usually the system of record for shared fields.
TIE_WINNER = Side.CRM


def conflict_winner(policy: Policy, proposal: Edit, truth: Edit) -> tuple[Side, str]:
    """Which side wins a conflict between two concurrent edits from different sides."""
    app, crm = (proposal, truth) if proposal.author is Side.APP else (truth, proposal)
    if policy is Policy.APP_WINS:
        return Side.APP, "conflict: app wins"
    if policy is Policy.CRM_WINS:
        return Side.CRM, "conflict: crm wins"
    if policy is Policy.NEWEST_WINS:
        if app.at == crm.at:
            return TIE_WINNER, "conflict: same commit time, crm wins ties"
        return (Side.APP, "conflict: app is newer") if app.at > crm.at else (Side.CRM, "conflict: crm is newer")
    if policy is Policy.APP_UNLESS_BLANK:
        return (Side.CRM, "conflict: app is blank") if is_blank(app.value) else (Side.APP, "conflict: app wins")
    return (Side.APP, "conflict: crm is blank") if is_blank(crm.value) else (Side.CRM, "conflict: crm wins")


def observe(
    rule: FieldRule,
    state: FieldState,
    side: Side,
    value: Value,
    at: datetime,
    *,
    from_duplex: bool,
    read_back: bool = False,
    foreign: bool = False,
) -> Decision:
    """Take one value reported by ``side`` (committed there at ``at``) and decide what follows.

    ``read_back``: the value comes from reading the record (a snapshot after a CDC gap or replay
    expiry), not from a change event: it shows the record's state, stamped with its last
    modification, and carries no origin client.
    ``foreign``: the change is tagged with another client than Duplex's by a side that tags every
    write of Duplex's (Salesforce: each call carries Duplex's client id), so it is someone's edit,
    never Duplex's write coming back, even when it equals a value Duplex is writing there.
    """
    if from_duplex:
        if state.replayed(side, value, at):
            # Not our write landing again: a later write of the same value may still be in flight.
            return Decision(Outcome.ECHO, state, {}, "replayed echo of an earlier write")
        state = state.with_echoed(side, Edit(value, side, at))
        # Only a tagged echo proves our write landed on that side, in that side's commit order.
        landed = state.landed(side, value)
        if landed is not None:
            return Decision(Outcome.ECHO, landed, {}, "echo confirms pending write")
        if state.truth is not None or state.pending(side):
            return Decision(Outcome.ECHO, state, {}, "echo of an earlier write")
        # A field Duplex never held a value for (the record's Id, a default Salesforce set while
        # creating our record): that side's own value, taken like any edit made there.

    truth = state.truth
    seen = state.seen(side)
    known = state.ours(side, value) or (seen is not None and same_value(seen.value, value))
    if read_back and known:
        # A record read back (after a CDC gap) is stamped with its last modification, whichever
        # field that touched, so a value already known from that side (a write of ours, or the
        # side's last edit) is not a newer edit, and the state stays as it was: taking its stamp
        # as the side's last edit would make the side's real edits, delivered after it, look
        # stale. An unknown value is an edit the gap hid.
        return Decision(Outcome.UNCHANGED, state, {}, "known value, read back")

    if seen is not None and at < seen.at:
        return Decision(Outcome.STALE, state, {}, f"older than the last {side} edit")
    if seen is not None and at == seen.at and same_value(seen.value, value):
        return Decision(Outcome.DUPLICATE, state, {}, "already seen")

    proposal = Edit(value, side, at)
    if not foreign and any(same_value(e.value, value) for e in state.pending(side)):
        # An untagged value equal to a write of ours still in flight to that side: our write coming
        # back without its tag (or someone typing what we are writing there anyway, which our write
        # will overwrite with the same value). An echo: dropped, counted, never written back, and it
        # changes no truth; even an echo of an older pending write (we sent "a" then "b", and "a"
        # comes back late) is not an edit that could outvote "b". It confirms nothing either: the
        # tagged echo, in that side's commit order, does. Seen, so a redelivery is a duplicate.
        return Decision(Outcome.ECHO, state.with_seen(side, proposal), {}, "echo: equals a pending write")
    state = state.with_seen(side, proposal)
    if state.lost is not None and state.lost.author is side:
        # The side edited again: its lost edit is no longer what it holds.
        state = replace(state, lost=None)
    truth = state.truth
    if truth is not None and same_value(truth.value, value):
        # The side agrees with the truth (perhaps typed before our write landed). Nothing to write,
        # but a newer edit becomes the truth's authorship so newest-wins compares against it.
        if at > truth.at:
            state = replace(state, truth=proposal)
        return Decision(Outcome.UNCHANGED, state, {}, "same as the synced value")

    # Concurrent edit: the side edited without having the truth, because our write of it there is
    # still in flight, or because its edit is older than the truth itself.
    conflict = truth is not None and truth.author is not side and (bool(state.pending(side)) or at < truth.at)
    if truth is not None and conflict:
        winner, reason = conflict_winner(rule.policy, proposal, truth)
        if winner is not side:
            lost = replace(state, lost=proposal)
            return Decision(Outcome.REJECTED, *_restore(rule, lost, side, truth), reason, conflict=True)
    else:
        reason = "first value seen" if truth is None else f"{side} changed"

    if is_blank(value) and not rule.allow_nulls and truth is not None and not is_blank(truth.value):
        # The blank stays on its side; the other side keeps its data and the truth stands.
        return Decision(Outcome.UNCHANGED, state, {}, f"{reason}; blank does not overwrite data", conflict=conflict)

    if state.lost is not None:
        # The other side's lost edit (this side's was cleared above) is concurrent with this edit
        # as well: this side never received it.
        winner, why = conflict_winner(rule.policy, proposal, state.lost)
        if winner is not side:
            return _reverse(rule, state, proposal, state.lost, why)

    # A truth this edit beat in a conflict is the other side's lost edit now.
    state = replace(state, truth=proposal, lost=truth if conflict else state.lost)
    writes: dict[Side, Edit] = {}
    other = side.other
    # A blank only travels when the mapping allows nulls: the other side may hold data we never saw.
    if (
        may_write(rule.direction, other)
        and not _sending(state, other, value)
        and (rule.allow_nulls or not is_blank(value))
    ):
        writes[other] = proposal
    if state.pending(side) and may_write(rule.direction, side):
        # Our earlier write to this side is still in flight and will land after this edit: write the
        # edit back after it, or the side would end up holding the value that just lost.
        writes[side] = proposal
    for target, write in writes.items():
        state = state.with_pending(target, (*state.pending(target), write))
    return Decision(Outcome.ACCEPTED, state, writes, reason, conflict=conflict)


def _sending(state: FieldState, side: Side, value: Value) -> bool:
    """Whether the last write in flight to ``side`` already carries ``value``."""
    pending = state.pending(side)
    return bool(pending) and same_value(pending[-1].value, value)


def _restore(rule: FieldRule, state: FieldState, side: Side, truth: Edit) -> tuple[FieldState, dict[Side, Edit]]:
    """After ``side`` lost a conflict, make sure it ends up holding the truth again."""
    if _sending(state, side, truth.value) or not may_write(rule.direction, side):
        return state, {}
    if is_blank(truth.value) and not rule.allow_nulls:
        return state, {}
    return state.with_pending(side, (*state.pending(side), truth)), {side: truth}


def _reverse(rule: FieldRule, state: FieldState, proposal: Edit, lost: Edit, reason: str) -> Decision:
    """``proposal`` lost to the other side's ``lost`` edit: that edit becomes the truth after all."""
    side, other = proposal.author, lost.author
    echoed = state.echoed(other)
    # The other side still holds its edit unless a write of ours landed there since (its tagged echo
    # came later in that side's commit order) or is on its way.
    overwritten = bool(state.pending(other)) or (echoed is not None and echoed.at > lost.at)
    state, writes = _restore(rule, replace(state, truth=lost, lost=proposal), side, lost)
    if overwritten:
        state, back = _restore(rule, state, other, lost)
        writes |= back
    return Decision(Outcome.REJECTED, state, writes, f"{reason}, against its earlier edit", conflict=True)


def roll_back(state: FieldState, side: Side, value: Value) -> FieldState:
    """``side`` refused the write of ``value`` for good: it will never echo, so stop waiting for it.

    Successful write outcomes deliberately confirm nothing: they can overtake the side's own
    change stream, and only the echo, in that side's commit order, shows which edits our write
    overwrote.
    """
    pending = state.pending(side)
    return state.with_pending(side, tuple(e for e in pending if not same_value(e.value, value)))

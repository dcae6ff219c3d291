"""What one mapped change means for each side of its link. Pure: no I/O.

:func:`resolve` runs :func:`policy.observe` for every changed field, applies the object pair's
delete policy to deletes and undeletes, and gathers what must be written into at most one
Salesforce write and one app update. Field values are kept in app terms (the mapping
translates both ways, so a value from either side is comparable with the other's); for each
field the Salesforce form of the current truth is kept beside it, to restore it on a side that
lost a conflict.

A change tagged with the tenant's client id is an echo of Duplex's own write: it only confirms
pending writes. Records deleted on a side receive no field writes there, so a late update never
resurrects them (field lessons §c-7).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.common.change import ChangeKind, Side
from services.common.tenant_config import DeletePolicy, FieldMapping, ObjectPair
from services.common.values import Value, is_blank, same_value
from services.conflict_resolver.policy import (
    Decision,
    FieldRule,
    FieldState,
    Outcome,
    may_write,
    observe,
    roll_back,
)


class Operation(enum.StrEnum):
    UPSERT = "upsert"
    UPDATE = "update"
    DELETE = "delete"


class EchoReason(enum.StrEnum):
    ORIGIN_CLIENT = "origin_client"  # tagged with Duplex's client id
    VALUES = "values"  # untagged, but carries the values already synced or still being written


@dataclass(frozen=True)
class FieldChange:
    app_field: str
    crm_field: str
    app_value: Value
    crm_value: Value
    changed: bool = True


@dataclass(frozen=True)
class MappedChange:
    """A ChangeMapped in domain terms."""

    event_id: str
    tenant_id: str
    link_id: str
    object_pair: str
    mapping_version: int
    side: Side
    kind: ChangeKind
    fields: tuple[FieldChange, ...]
    at: datetime
    app_record_id: str = ""
    crm_record_id: str = ""
    external_id: str = ""
    origin_client: str = ""
    source_event_id: str = ""
    # Fields mapping dropped (name -> why): they never reach resolve(), only the sync log.
    dropped: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkState:
    link_id: str
    object_pair: str
    external_id: str
    app_record_id: str | None = None
    crm_record_id: str | None = None
    version: int = 0
    app_deleted: bool = False
    crm_deleted: bool = False

    def deleted(self, side: Side) -> bool:
        return self.app_deleted if side is Side.APP else self.crm_deleted

    def with_deleted(self, side: Side, deleted: bool) -> LinkState:
        return replace(self, app_deleted=deleted) if side is Side.APP else replace(self, crm_deleted=deleted)

    def record_id(self, side: Side) -> str | None:
        return self.app_record_id if side is Side.APP else self.crm_record_id


@dataclass(frozen=True)
class FieldRecord:
    """One field's policy state, and its truth and lost edit in Salesforce terms."""

    state: FieldState = field(default_factory=FieldState)
    crm_form: Value = None
    # The lost edit may become the truth after all (see policy), and be written to Salesforce.
    lost_crm_form: Value = None


@dataclass(frozen=True)
class FieldDecision:
    field: str
    outcome: Outcome
    reason: str
    policy: str
    conflict: bool = False
    winner: Side | None = None
    echo: EchoReason | None = None


@dataclass(frozen=True)
class CrmWrite:
    operation: Operation
    version: int
    record_id: str = ""
    external_id_value: str = ""
    # Salesforce field name -> value in Salesforce terms.
    fields: Mapping[str, Value] = field(default_factory=dict)
    # App field name -> the value (app terms) that went pending, to roll back on rejection.
    pending: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class AppUpdate:
    kind: ChangeKind
    # The app record id; empty for a record the app has not created yet (see external_id).
    record_id: str
    external_id: str
    fields: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    link: LinkState
    # Only the fields whose record changed.
    fields: Mapping[str, FieldRecord]
    decisions: tuple[FieldDecision, ...]
    crm_write: CrmWrite | None = None
    app_update: AppUpdate | None = None
    # Link-level decisions for the sync log (deletes, undeletes, suppressed writes).
    notes: tuple[str, ...] = ()
    echo: EchoReason | None = None


def rule_of(pair: ObjectPair, mapping: FieldMapping) -> FieldRule:
    return FieldRule(pair.conflict_policy_of(mapping), pair.direction_of(mapping), mapping.allow_nulls)


class _Builder:
    """The writes, states and notes of one change as they accumulate."""

    def __init__(self, pair: ObjectPair, link: LinkState, fields: Mapping[str, FieldRecord]) -> None:
        self.pair = pair
        self.link = link
        self.stored = fields
        self.records: dict[str, FieldRecord] = {}
        self.decisions: list[FieldDecision] = []
        self.crm: dict[str, Value] = {}
        self.crm_pending: dict[str, Value] = {}
        self.app: dict[str, Value] = {}
        self.notes: list[str] = []
        self.crm_delete = False
        self.app_delete = False
        self.app_undelete = False

    def record(self, app_field: str) -> FieldRecord:
        return self.records.get(app_field) or self.stored.get(app_field) or FieldRecord()

    def observe(
        self,
        mapping: FieldMapping,
        change: FieldChange,
        side: Side,
        at: datetime,
        *,
        from_duplex: bool,
        read_back: bool = False,
        foreign: bool = False,
    ) -> None:
        rule = rule_of(self.pair, mapping)
        before = self.record(mapping.app)
        decision = observe(
            rule,
            before.state,
            side,
            change.app_value,
            at,
            from_duplex=from_duplex,
            read_back=read_back,
            foreign=foreign,
        )
        state = decision.state
        # The truth and the lost edit only ever change to this change's edit or to each other.
        crm_form, lost_crm_form = before.crm_form, before.lost_crm_form
        if state.truth is not before.state.truth:
            crm_form = before.lost_crm_form if state.truth is before.state.lost else change.crm_value
        if state.lost is None:
            lost_crm_form = None
        elif state.lost is not before.state.lost:
            lost_crm_form = before.crm_form if state.lost is before.state.truth else change.crm_value
        for target, edit in decision.writes.items():
            if self.link.deleted(target):
                # Never write into a record deleted on that side: stop waiting for an echo instead.
                state = roll_back(state, target, edit.value)
                self.notes.append(f"{mapping.app}: not written to {target}, the record is deleted there")
                continue
            if target is Side.CRM:
                proposal = edit.author is side and edit.at == at
                self.crm[mapping.salesforce] = change.crm_value if proposal else crm_form
                self.crm_pending[mapping.app] = edit.value
            else:
                self.app[mapping.app] = edit.value
        self.records[mapping.app] = FieldRecord(state, crm_form, lost_crm_form)
        self.decisions.append(_decision(mapping, rule, decision, before.state, side, from_duplex=from_duplex))

    def push_truth(self, target: Side, *, besides_change: bool = False) -> None:
        """Send every field's truth to ``target`` (a record recreated there by an undelete); with
        ``besides_change``, those this change does not write already. A value already on its way
        there is sent again but awaited once: its echo confirms either write."""
        for mapping in self.pair.fields:
            rule = rule_of(self.pair, mapping)
            record = self.record(mapping.app)
            truth = record.state.truth
            if truth is None or not may_write(rule.direction, target):
                continue
            if is_blank(truth.value) and not rule.allow_nulls:
                continue
            if besides_change and mapping.app in (self.crm_pending if target is Side.CRM else self.app):
                continue
            awaited = any(same_value(e.value, truth.value) for e in record.state.pending(target))
            if not awaited:
                state = record.state.with_pending(target, (*record.state.pending(target), truth))
                self.records[mapping.app] = replace(record, state=state)
            if target is Side.CRM:
                self.crm[mapping.salesforce] = record.crm_form
                if not awaited:
                    self.crm_pending[mapping.app] = truth.value
            else:
                self.app[mapping.app] = truth.value


def _decision(
    mapping: FieldMapping, rule: FieldRule, decision: Decision, before: FieldState, side: Side, *, from_duplex: bool
) -> FieldDecision:
    echo = None
    if decision.outcome is Outcome.ECHO:
        # Untagged, it carried the value of a write of ours still pending to that side.
        echo = EchoReason.ORIGIN_CLIENT if from_duplex else EchoReason.VALUES
    elif decision.outcome is Outcome.UNCHANGED and not decision.conflict:
        truth = before.truth
        synced = truth is not None and same_value(truth.value, (decision.state.seen(side) or truth).value)
        echo = EchoReason.VALUES if synced else None
    winner = None
    if decision.conflict:
        winner = side if decision.outcome is Outcome.ACCEPTED else side.other
    return FieldDecision(
        mapping.app, decision.outcome, decision.reason, str(rule.policy), decision.conflict, winner, echo
    )


def _soft_flag(pair: ObjectPair) -> FieldMapping | None:
    """The mapped field that carries the pair's soft-delete flag, if the flag is a mapped field."""
    soft = pair.soft_delete_field
    if soft is None:
        return None
    for mapping in pair.fields:
        if (soft.app and mapping.app == soft.app) or (
            soft.salesforce and mapping.salesforce.lower() == soft.salesforce.lower()
        ):
            return mapping
    return None


def _deletes_flow(pair: ObjectPair, side: Side) -> bool:
    """Deletes flow in the pair's direction."""
    return pair.direction.to_crm if side is Side.APP else pair.direction.to_app


def _flag(b: _Builder, side: Side, at: datetime, deleted: bool) -> None:
    """Soft delete (or restore) on the side opposite ``side``."""
    pair = b.pair
    soft = pair.soft_delete_field
    mapping = _soft_flag(pair)
    if mapping is not None:
        # Through the policy, so the flag's echo is recognised like any other field's.
        b.observe(mapping, FieldChange(mapping.app, mapping.salesforce, deleted, deleted), side, at, from_duplex=False)
    elif soft is not None:
        other = side.other
        if other is Side.CRM and soft.salesforce:
            b.crm[soft.salesforce] = deleted
        elif other is Side.APP and soft.app:
            b.app[soft.app] = deleted
    b.notes.append(f"{'soft delete' if deleted else 'soft delete undone'} on {side.other}")


def _delete(b: _Builder, change: MappedChange) -> EchoReason | None:
    side = change.side
    if b.link.deleted(side):
        b.notes.append(f"delete on {side}: already deleted there")
        return EchoReason.VALUES
    b.link = b.link.with_deleted(side, True)
    policy = b.pair.delete_policy
    other = side.other
    if not _deletes_flow(b.pair, side) or policy is DeletePolicy.IGNORE:
        b.notes.append(f"delete on {side}: not propagated (policy {policy}, direction {b.pair.direction})")
        return None
    if policy is DeletePolicy.SOFT_DELETE:
        _flag(b, side, change.at, True)
        return None
    if b.link.deleted(other):
        b.notes.append(f"delete on {side}: already deleted on {other}")
    elif b.link.record_id(other) is None:
        b.notes.append(f"delete on {side}: no {other} record yet, nothing to delete")
    else:
        b.link = b.link.with_deleted(other, True)
        if other is Side.CRM:
            b.crm_delete = True
        else:
            b.app_delete = True
        b.notes.append(f"delete on {side}: propagated to {other}")
    return None


def _undelete(b: _Builder, change: MappedChange) -> None:
    side = change.side
    b.link = b.link.with_deleted(side, False)
    policy = b.pair.delete_policy
    other = side.other
    if not _deletes_flow(b.pair, side) or policy is DeletePolicy.IGNORE:
        b.notes.append(f"undelete on {side}: not propagated (policy {policy})")
        return
    if policy is DeletePolicy.SOFT_DELETE:
        _flag(b, side, change.at, False)
        return
    if not b.link.deleted(other):
        return
    b.link = b.link.with_deleted(other, False)
    if other is Side.CRM:
        # Salesforce's REST API cannot undelete: the record is created again through the upsert
        # on Duplex's external id, and its new id comes back with the write outcome.
        b.link = replace(b.link, crm_record_id=None)
    else:
        b.app_undelete = True
    b.push_truth(other)
    b.notes.append(f"undelete on {side}: propagated to {other}")


def resolve(
    pair: ObjectPair,
    client_id: str,
    link: LinkState,
    fields: Mapping[str, FieldRecord],
    change: MappedChange,
) -> Resolution:
    """Decide what ``change`` means for both sides of ``link``."""
    from_duplex = bool(client_id) and change.origin_client == client_id
    # Salesforce tags every write of Duplex's with its client id (a Bulk job's may come back
    # untagged), so a change tagged with another client is someone's edit. The app side is not
    # trusted this far: an app that tags its own client on what it applied for Duplex would
    # otherwise turn Duplex's late echoes into edits.
    foreign = change.side is Side.CRM and bool(change.origin_client) and not from_duplex
    link = replace(
        link,
        object_pair=change.object_pair or link.object_pair,
        app_record_id=change.app_record_id or link.app_record_id,
        crm_record_id=change.crm_record_id or link.crm_record_id,
    )
    b = _Builder(pair, link, fields)
    echo: EchoReason | None = None
    if change.kind is ChangeKind.DELETE:
        if from_duplex:
            b.link = b.link.with_deleted(change.side, True)
            b.notes.append(f"delete on {change.side}: Duplex's own")
            echo = EchoReason.ORIGIN_CLIENT
        else:
            echo = _delete(b, change)
    else:
        if change.kind is ChangeKind.UNDELETE:
            if from_duplex:
                b.link = b.link.with_deleted(change.side, False)
            else:
                _undelete(b, change)
        elif b.link.deleted(change.side):
            # An update from a side where the record is deleted (reordered delivery): it is not there.
            b.notes.append(f"{change.kind} on {change.side} ignored: the record is deleted there")
            # Our own write landing just before the record was deleted is still an echo, and counted.
            if from_duplex:
                echo = EchoReason.ORIGIN_CLIENT
            elif _carries_pending(b, change):
                echo = EchoReason.VALUES
            return _finish(b, change, echo)
        for f in change.fields:
            mapping = pair.field_by_app(f.app_field)
            if not f.changed or mapping is None:
                continue
            b.observe(
                mapping,
                f,
                change.side,
                change.at,
                from_duplex=from_duplex,
                read_back=change.kind is ChangeKind.SNAPSHOT,
                foreign=foreign,
            )
        if from_duplex:
            echo = EchoReason.ORIGIN_CLIENT
        elif b.decisions and all(d.echo is EchoReason.VALUES for d in b.decisions):
            echo = EchoReason.VALUES
    return _finish(b, change, echo)


def _carries_pending(b: _Builder, change: MappedChange) -> bool:
    """Whether every mapped field of ``change`` carries a value Duplex is still writing to its side."""
    values = [
        (mapping.app, f.app_value)
        for f in change.fields
        if f.changed and (mapping := b.pair.field_by_app(f.app_field)) is not None
    ]
    return bool(values) and all(
        any(same_value(e.value, value) for e in b.record(name).state.pending(change.side)) for name, value in values
    )


def _finish(b: _Builder, change: MappedChange, echo: EchoReason | None) -> Resolution:
    link = b.link
    crm_write = None
    crm_id = link.crm_record_id
    if b.crm_delete and crm_id:
        link = replace(link, version=link.version + 1)
        crm_write = CrmWrite(Operation.DELETE, link.version, record_id=crm_id)
    elif b.crm:
        if not link.crm_record_id:
            # An upsert may create the record: it carries every field, not only those changed.
            # After a create Salesforce refused (a required value missing, say), nothing else would
            # ever send the fields that have not changed since; and an earlier create still on its
            # way may yet be refused.
            b.push_truth(Side.CRM, besides_change=True)
        link = replace(link, version=link.version + 1)
        if link.crm_record_id:
            crm_write = CrmWrite(
                Operation.UPDATE, link.version, record_id=link.crm_record_id, fields=b.crm, pending=b.crm_pending
            )
        else:
            crm_write = CrmWrite(
                Operation.UPSERT, link.version, external_id_value=link.external_id, fields=b.crm, pending=b.crm_pending
            )
    app_update = None
    if b.app_delete and link.app_record_id:
        app_update = AppUpdate(ChangeKind.DELETE, link.app_record_id, link.link_id)
    elif b.app or b.app_undelete:
        kind = ChangeKind.UPDATE if link.app_record_id else ChangeKind.CREATE
        if b.app_undelete:
            kind = ChangeKind.UNDELETE
        app_update = AppUpdate(kind, link.app_record_id or "", link.link_id, b.app)
    return Resolution(link, b.records, tuple(b.decisions), crm_write, app_update, tuple(b.notes), echo)


class WriteStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"  # for good: a retry will not change Salesforce's mind


@dataclass(frozen=True)
class WriteError:
    code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class WriteOutcome:
    """A WriteSettled in domain terms: how one write sent for a link ended."""

    command_id: str
    tenant_id: str
    link_id: str
    version: int
    # None for a status without a meaning here: the outcome is only recorded as seen.
    status: WriteStatus | None
    operation: Operation | None
    record_id: str = ""
    created: bool = False
    errors: tuple[WriteError, ...] = ()


def settle_rejected(fields: Mapping[str, FieldRecord], pending: Mapping[str, Value]) -> dict[str, FieldRecord]:
    """Salesforce refused a write for good: its values will never echo, so stop waiting for them."""
    settled = {}
    for app_field, value in pending.items():
        record = fields.get(app_field)
        if record is not None:
            settled[app_field] = replace(record, state=roll_back(record.state, Side.CRM, value))
    return settled


@dataclass(frozen=True)
class Summary:
    """Counts for metrics."""

    echoes: int
    conflicts: tuple[FieldDecision, ...]


def summarise(resolution: Resolution) -> Summary:
    conflicts = tuple(d for d in resolution.decisions if d.conflict)
    return Summary(1 if resolution.echo is not None else 0, conflicts)

"""What changed in a Salesforce object between two describes, and which mapping rules it touches. Pure.

A Salesforce admin changes the org under Duplex's mappings: deletes a field, shortens it, makes
it read-only or required, adds picklist values, takes the object out of Change Data Capture.
:func:`object_changes` names each change; :func:`rule_warnings` ties them to the rules of the
tenant's configuration, and marks the ones Duplex cannot keep syncing (a rule whose field is gone,
or can no longer be written the way the rule sends it). Mapping skips those rules on its own
(``services/mapping/translate.py``) while the rest of the pair keeps syncing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.common.schema import CrmField, CrmObject
from services.common.tenant_config import ObjectPair, TenantConfig


class ChangeKind(StrEnum):
    OBJECT_REMOVED = "object_removed"
    FIELD_ADDED = "field_added"
    FIELD_REMOVED = "field_removed"
    TYPE_CHANGED = "type_changed"
    LENGTH_CHANGED = "length_changed"
    BECAME_READ_ONLY = "became_read_only"
    BECAME_WRITABLE = "became_writable"
    BECAME_REQUIRED = "became_required"
    BECAME_OPTIONAL = "became_optional"
    PICKLIST_CHANGED = "picklist_changed"
    CDC_DESELECTED = "cdc_deselected"
    CDC_SELECTED = "cdc_selected"


@dataclass(frozen=True)
class SchemaChange:
    object: str
    kind: ChangeKind
    # None for changes of the whole object (removed, CDC).
    field: str | None
    message: str
    before: Any = None
    after: Any = None

    def document(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "kind": str(self.kind),
            "field": self.field,
            "message": self.message,
            "before": self.before,
            "after": self.after,
        }

    @staticmethod
    def from_document(document: Mapping[str, Any]) -> SchemaChange:
        return SchemaChange(
            object=str(document["object"]),
            kind=ChangeKind(document["kind"]),
            field=document.get("field"),
            message=str(document["message"]),
            before=document.get("before"),
            after=document.get("after"),
        )


def _field_changes(name: str, old: CrmField, new: CrmField) -> list[SchemaChange]:
    where = f"{name}.{new.name}"
    changes: list[SchemaChange] = []
    if old.type != new.type:
        changes.append(
            SchemaChange(
                name, ChangeKind.TYPE_CHANGED, new.name, f"{where}: type {old.type} -> {new.type}", old.type, new.type
            )
        )
    if old.length != new.length:
        shorter = "shortened" if new.length < old.length else "lengthened"
        changes.append(
            SchemaChange(
                name,
                ChangeKind.LENGTH_CHANGED,
                new.name,
                f"{where}: {shorter} from {old.length} to {new.length} characters",
                old.length,
                new.length,
            )
        )
    if old.writable != new.writable:
        kind = ChangeKind.BECAME_WRITABLE if new.writable else ChangeKind.BECAME_READ_ONLY
        state = "writable" if new.writable else "read-only"
        changes.append(SchemaChange(name, kind, new.name, f"{where}: became {state}", old.writable, new.writable))
    if old.required != new.required:
        kind = ChangeKind.BECAME_REQUIRED if new.required else ChangeKind.BECAME_OPTIONAL
        state = "required on create" if new.required else "optional"
        changes.append(SchemaChange(name, kind, new.name, f"{where}: became {state}", old.required, new.required))
    before = {p.value for p in old.picklist if p.active}
    after = {p.value for p in new.picklist if p.active}
    if before != after:
        added, removed = sorted(after - before), sorted(before - after)
        parts = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
        changes.append(
            SchemaChange(
                name,
                ChangeKind.PICKLIST_CHANGED,
                new.name,
                f"{where}: picklist values {'; '.join(p for p in parts if p)}",
                {"added": added, "removed": removed},
                sorted(after),
            )
        )
    return changes


def object_changes(
    name: str,
    before: CrmObject | None,
    after: CrmObject | None,
    *,
    cdc_before: bool | None = None,
    cdc_after: bool | None = None,
) -> list[SchemaChange]:
    """Every change from ``before`` to ``after`` (None: not described / gone); CDC when both are known."""
    changes: list[SchemaChange] = []
    if before is not None and after is None:
        changes.append(SchemaChange(name, ChangeKind.OBJECT_REMOVED, None, f"{name}: the object is gone from the org"))
    if before is not None and after is not None:
        old = {f.name.lower(): f for f in before.fields}
        new = {f.name.lower(): f for f in after.fields}
        for key, field in new.items():
            if key not in old:
                changes.append(SchemaChange(name, ChangeKind.FIELD_ADDED, field.name, f"{name}.{field.name}: added"))
            else:
                changes.extend(_field_changes(name, old[key], field))
        changes.extend(
            SchemaChange(name, ChangeKind.FIELD_REMOVED, field.name, f"{name}.{field.name}: deleted")
            for key, field in old.items()
            if key not in new
        )
    if cdc_before is not None and cdc_after is not None and cdc_before != cdc_after:
        kind = ChangeKind.CDC_SELECTED if cdc_after else ChangeKind.CDC_DESELECTED
        state = "selected for" if cdc_after else "deselected from"
        changes.append(SchemaChange(name, kind, None, f"{name}: {state} Change Data Capture"))
    return changes


@dataclass(frozen=True)
class RuleWarning:
    """A rule of the configuration a schema change touches; ``paused`` when Duplex skips the rule."""

    pair: str
    app_field: str | None
    salesforce_field: str | None
    change: SchemaChange
    paused: bool
    message: str


def _paused_by(change: SchemaChange, pair: ObjectPair, app_field: str) -> bool:
    """Whether mapping now skips the rule: its field is gone, or it only sends values to a read-only field.

    This mirrors :func:`services.mapping.translate.translate`, which decides from describe alone.
    """
    if change.kind is ChangeKind.FIELD_REMOVED:
        return True
    field = pair.field_by_app(app_field)
    return change.kind is ChangeKind.BECAME_READ_ONLY and field is not None and not pair.direction_of(field).to_app


def _rule_message(change: SchemaChange, paused: bool, pair: str, app_field: str | None) -> str:
    rule = f"pair {pair}" + (f", field {app_field}" if app_field else "")
    if paused:
        return f"{change.message}: {rule} is paused until the mapping is fixed"
    return f"{change.message}: check {rule}"


def _touches(change: SchemaChange) -> bool:
    return change.kind not in (ChangeKind.FIELD_ADDED, ChangeKind.BECAME_OPTIONAL, ChangeKind.BECAME_WRITABLE)


def rule_warnings(config: TenantConfig, changes: Iterable[SchemaChange]) -> list[RuleWarning]:
    """The warnings ``changes`` raise for ``config``'s rules (an added field touches no rule)."""
    warnings: list[RuleWarning] = []
    for change in changes:
        if not _touches(change):
            continue
        for pair in config.spec.objects:
            if pair.salesforce.object.lower() != change.object.lower():
                continue
            if change.field is None:
                # A whole object gone pauses nothing: its writes fail, each with Salesforce's error.
                message = _rule_message(change, False, pair.name, None)
                warnings.append(RuleWarning(pair.name, None, None, change, False, message))
                continue
            if change.kind is ChangeKind.BECAME_REQUIRED:
                mapped = pair.field_by_salesforce(change.field) is not None
                if not mapped:
                    # Not mapped, yet creates now need it: every create of the pair will be refused.
                    warnings.append(
                        RuleWarning(
                            pair.name,
                            None,
                            change.field,
                            change,
                            False,
                            f"{change.message}: pair {pair.name} does not map it, so Salesforce will refuse its"
                            " creates (REQUIRED_FIELD_MISSING) until it does",
                        )
                    )
                continue
            if change.field.lower() == pair.salesforce.external_id_field.lower():
                broken = change.kind in (ChangeKind.FIELD_REMOVED, ChangeKind.TYPE_CHANGED, ChangeKind.BECAME_READ_ONLY)
                consequence = "every write of the pair will fail until it is fixed" if broken else "check the pair"
                warnings.append(
                    RuleWarning(
                        pair.name,
                        None,
                        change.field,
                        change,
                        False,
                        f"{change.message}: it is pair {pair.name}'s external id; {consequence}",
                    )
                )
                continue
            rule = pair.field_by_salesforce(change.field)
            if rule is None:
                continue
            paused = _paused_by(change, pair, rule.app)
            warnings.append(
                RuleWarning(
                    pair.name,
                    rule.app,
                    rule.salesforce,
                    change,
                    paused,
                    _rule_message(change, paused, pair.name, rule.app),
                )
            )
    return warnings


def standing_warnings(
    config: TenantConfig, objects: Mapping[str, CrmObject | None], cdc: Mapping[str, bool | None]
) -> list[RuleWarning]:
    """What is wrong now between ``config``'s rules and the newest describes, whatever the history.

    ``objects`` and ``cdc`` are by lowercase object name; an object absent from ``objects`` was never
    described and raises nothing (there is nothing to compare against).
    """
    current: list[SchemaChange] = []
    for pair in config.spec.objects:
        key = pair.salesforce.object.lower()
        if key not in objects:
            continue
        obj = objects[key]
        name = pair.salesforce.object
        if obj is None:
            current.append(SchemaChange(name, ChangeKind.OBJECT_REMOVED, None, f"{name}: not in the org"))
            continue
        for rule in pair.fields:
            field = obj.field(rule.salesforce)
            if field is None:
                if rule.salesforce.lower() != "id":
                    current.append(
                        SchemaChange(
                            name, ChangeKind.FIELD_REMOVED, rule.salesforce, f"{name}.{rule.salesforce}: not in the org"
                        )
                    )
            elif not field.writable and pair.direction_of(rule).to_crm:
                current.append(
                    SchemaChange(name, ChangeKind.BECAME_READ_ONLY, field.name, f"{name}.{field.name}: read-only")
                )
            elif (
                rule.transform
                and rule.transform.max_length
                and field.length
                and field.length < rule.transform.max_length
            ):
                current.append(
                    SchemaChange(
                        name,
                        ChangeKind.LENGTH_CHANGED,
                        field.name,
                        f"{name}.{field.name}: holds {field.length} characters, the rule allows"
                        f" {rule.transform.max_length}; longer values will be refused",
                        rule.transform.max_length,
                        field.length,
                    )
                )
        if config.spec.sync.cdc and cdc.get(key) is False:
            current.append(
                SchemaChange(
                    name,
                    ChangeKind.CDC_DESELECTED,
                    None,
                    f"{name}: not selected for Change Data Capture; Duplex polls it",
                )
            )
    unique = list({(c.object.lower(), c.kind, c.field): c for c in current}.values())
    return rule_warnings(config, unique)

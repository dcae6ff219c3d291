"""One object pair's page: its settings, field rules, mapping suggestions, drift and SOQL filter, edited
as a draft that is planned, then saved as a new version of the tenant's configuration.

The draft is the whole Tenant document, as JSON in a hidden field of the page's one form. Each button
posts it with every control of the page; the server lays the controls over the draft, does what the
button says and renders the page again, so what the page shows is what Plan and Save send, and nothing
is kept on the server between requests. Nothing is applied before Save, which is ``PUT
/api/v1/tenants/{t}`` as the signed-in user: the API decides who may save (an admin) and what may be
saved (its 422s are shown next to the controls they name, and the draft is kept).

Editing the draft is pure functions of the document (camelCase dicts, as the API answers it), tested
without a browser in ``tests/unit/admin/test_console_mappings.py``.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

import asyncio
import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.admin.console.tenants import signed_in
from services.admin.console.web import PREFIX, Api, ApiProblemError, Web, back, form_of, segment
from services.common.tenant_config import ConflictPolicy, DeletePolicy, Direction, FieldType

Document = dict[str, Any]

DIRECTIONS = {
    Direction.BOTH.value: "both ways",
    Direction.APP_TO_CRM.value: "app → Salesforce",
    Direction.CRM_TO_APP.value: "Salesforce → app",
}
CONFLICT_POLICIES = tuple(p.value for p in ConflictPolicy)
DELETE_POLICIES = tuple(p.value for p in DeletePolicy)
TRANSFORM_TYPES = tuple(t.value for t in FieldType)
RECONCILE = ("hourly", "daily", "weekly")
POLL_SECONDS = (60, 300, 600)
ON_LEAVE = {"stop": "stops being synced", "delete": "is deleted (or archived) on the other side"}
# Which part of the page an edit's own problem is shown in.
ADD, SUGGESTIONS, FILTER, PLAN = "add", "suggestions", "filter", "plan"
NEW_RULE = ("newApp", "newSalesforce", "newDirection", "newPolicy", "newTransform")

_PAIR_PATH = re.compile(r"spec\.objects\[(\d+)\](?:\.([A-Za-z]+)(?:\[(\d+)\])?)?\.?(.*)")
_COLUMN = re.compile(r"column (\d+): ")
_PAIR_SETTINGS = ("direction", "conflictPolicy", "deletePolicy", "softDeleteField", "schedule")


class DraftError(ValueError):
    """A draft or an edit of it that cannot be used; ``where`` is the part of the page that says so."""

    def __init__(self, message: str, where: str = PLAN) -> None:
        super().__init__(message)
        self.where = where


# ---------------------------------------------------------------------------------------------
# The draft and its edits


def load_draft(text: str | None, pair: str) -> Document:
    """The posted draft, which must be a document holding ``pair``."""
    try:
        document = json.loads(text or "")
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise DraftError("the draft sent with the form cannot be read; open the pair's page again")
    pair_index(document, pair)
    return document


def draft_text(document: Document) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def pair_index(document: Document, name: str) -> int:
    pairs = document.get("spec", {}).get("objects") or []
    for i, pair in enumerate(pairs):
        if isinstance(pair, dict) and pair.get("name") == name:
            return i
    raise DraftError(f"the draft has no object pair {name!r}")


def pair_of(document: Document, name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["spec"]["objects"][pair_index(document, name)]
    return found


def spliced(current: Document, draft: Document, name: str) -> Document:
    """The current document with the draft's pair in place of its own: the page edits one pair, so
    what others applied meanwhile to the rest of the tenant is kept, not replaced by the draft's copy."""
    merged = copy.deepcopy(current)
    objects = merged["spec"].setdefault("objects", [])
    pair = copy.deepcopy(pair_of(draft, name))
    names = [p.get("name") for p in objects]
    if name in names:
        objects[names.index(name)] = pair
    else:
        objects.append(pair)
    return merged


def _edited(document: Document, name: str, change: Callable[[dict[str, Any]], None]) -> Document:
    edited = copy.deepcopy(document)
    change(pair_of(edited, name))
    return edited


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    """``key`` given a value, or left out (the document's default) when the value is blank."""
    if value in (None, "", {}, []):
        target.pop(key, None)
    else:
        target[key] = value


def schedule_of(reconcile: str, poll: str, custom: str) -> dict[str, Any]:
    """The schedule the page's controls say; a custom interval that is not a number is kept as typed,
    so the API's message about it is shown next to it rather than the value silently lost."""
    schedule: dict[str, Any] = {}
    if reconcile:
        schedule["reconcile"] = reconcile
    seconds = custom.strip() if poll == "custom" else poll
    if seconds:
        schedule["pollIntervalSeconds"] = int(seconds) if seconds.isdigit() else seconds
    return schedule


def poll_choice(schedule: Mapping[str, Any] | None) -> tuple[str, str]:
    """The poll select's value and the custom box's text for a pair's schedule."""
    seconds = (schedule or {}).get("pollIntervalSeconds")
    if seconds is None:
        return "", ""
    if seconds in POLL_SECONDS:
        return str(seconds), ""
    return "custom", str(seconds)


def _effective_direction(pair: Mapping[str, Any], rule: Mapping[str, Any]) -> str:
    return str(rule.get("direction") or pair.get("direction") or Direction.BOTH.value)


def laid_over(document: Document, name: str, form: Mapping[str, str]) -> Document:
    """The draft with the page's controls laid over it: what the user sees is what is planned or saved.

    A control missing from ``form`` leaves its part of the draft as it was.
    """

    def change(pair: dict[str, Any]) -> None:
        for key in ("direction", "conflictPolicy", "deletePolicy"):
            if key in form:
                _set(pair, key, form[key])
        if "softDeleteApp" in form or "softDeleteSalesforce" in form:
            soft = {"app": form.get("softDeleteApp", ""), "salesforce": form.get("softDeleteSalesforce", "")}
            _set(pair, "softDeleteField", {k: v.strip() for k, v in soft.items() if v.strip()})
        if pair.get("deletePolicy") != DeletePolicy.SOFT_DELETE.value:
            # The API refuses a soft-delete field beside another delete policy.
            pair.pop("softDeleteField", None)
        if "reconcile" in form or "poll" in form:
            schedule = schedule_of(form.get("reconcile", ""), form.get("poll", ""), form.get("pollCustom", ""))
            _set(pair, "schedule", schedule)
        for rule in pair.get("fields") or []:
            app = rule["app"]
            if f"rule-direction-{app}" in form:
                _set(rule, "direction", form[f"rule-direction-{app}"])
            if f"rule-policy-{app}" in form:
                _set(rule, "conflictPolicy", form[f"rule-policy-{app}"])
            # A conflict policy is only for a rule syncing both ways (the API refuses it otherwise):
            # a rule made one-way loses it rather than leaving the user to clear it by hand.
            if _effective_direction(pair, rule) != Direction.BOTH.value:
                rule.pop("conflictPolicy", None)
        if "soql" in form:
            _set_filter(pair, form["soql"], form.get("onLeave", ""))

    return _edited(document, name, change)


def _set_filter(pair: dict[str, Any], soql: str, on_leave: str) -> None:
    record_filter = dict(pair.get("filter") or {})
    # Browsers send a text area's line breaks as CRLF; the API's columns count characters as typed.
    _set(record_filter, "soql", soql.replace("\r\n", "\n").strip())
    if on_leave:
        record_filter["onLeave"] = on_leave
    # A filter without a condition would only carry onLeave, which means nothing alone.
    conditions = record_filter.get("soql") or record_filter.get("app") or record_filter.get("salesforce")
    _set(pair, "filter", record_filter if conditions else None)


def new_rule(
    app: str,
    salesforce: str,
    *,
    direction: str = "",
    conflict_policy: str = "",
    transform_type: str = "",
    writable: bool = True,
) -> dict[str, Any]:
    """A field rule as the page adds it. A Salesforce field no one can write only flows to the app."""
    rule: dict[str, Any] = {"app": app.strip(), "salesforce": salesforce.strip()}
    _set(rule, "direction", direction or ("" if writable else Direction.CRM_TO_APP.value))
    if rule.get("direction", Direction.BOTH.value) == Direction.BOTH.value:
        _set(rule, "conflictPolicy", conflict_policy)
    if transform_type:
        rule["transform"] = {"type": transform_type}
    return rule


def with_rule(document: Document, name: str, rule: Mapping[str, Any]) -> Document:
    """``rule`` added to the pair (its app field no longer ignored); refused when either field is mapped."""
    app, salesforce = str(rule.get("app") or ""), str(rule.get("salesforce") or "")
    if not app or not salesforce:
        raise DraftError("name both the app field and the Salesforce field", ADD)
    pair = pair_of(document, name)
    for existing in pair.get("fields") or []:
        if existing["app"] == app:
            raise DraftError(f"{app} already has a rule (to {existing['salesforce']}): change or remove it", ADD)
        if existing["salesforce"].lower() == salesforce.lower():
            raise DraftError(f"{existing['salesforce']} is already mapped from {existing['app']}", ADD)

    def change(pair: dict[str, Any]) -> None:
        pair["fields"] = [*(pair.get("fields") or []), dict(rule)]
        _set(pair, "ignoredFields", [f for f in pair.get("ignoredFields") or [] if f != app])

    return _edited(document, name, change)


def without_rule(document: Document, name: str, app: str) -> Document:
    def change(pair: dict[str, Any]) -> None:
        pair["fields"] = [r for r in pair.get("fields") or [] if r["app"] != app]

    return _edited(document, name, change)


def ignoring(document: Document, name: str, app: str) -> Document:
    """``app`` in the pair's ``ignoredFields``: deliberately left unmapped."""
    pair = pair_of(document, name)
    if any(r["app"] == app for r in pair.get("fields") or []):
        raise DraftError(f"{app} is mapped; remove its rule before ignoring it", SUGGESTIONS)

    def change(pair: dict[str, Any]) -> None:
        ignored = list(pair.get("ignoredFields") or [])
        pair["ignoredFields"] = ignored if app in ignored else [*ignored, app]

    return _edited(document, name, change)


def not_ignoring(document: Document, name: str, app: str) -> Document:
    def change(pair: dict[str, Any]) -> None:
        pair["ignoredFields"] = [f for f in pair.get("ignoredFields") or [] if f != app]

    return _edited(document, name, change)


# ---------------------------------------------------------------------------------------------
# What the page shows


@dataclass(frozen=True)
class Choice:
    """An option of a select of Salesforce fields."""

    name: str
    text: str


def field_choices(fields: Sequence[Mapping[str, Any]], taken: set[str]) -> list[Choice]:
    """Salesforce fields a new rule may map (not ``taken``, by lowercase name), by name."""
    return [
        Choice(f["name"], f"{f['name']} ({f['label']}, {f['type']}{'' if _writable(f) else ', read-only'})")
        for f in sorted(fields, key=lambda f: str(f["name"]).lower())
        if str(f["name"]).lower() not in taken
    ]


def _writable(described: Mapping[str, Any]) -> bool:
    return bool(described.get("createable") or described.get("updateable")) and not described.get("calculated")


def writable(fields: Sequence[Mapping[str, Any]], name: str) -> bool:
    """Whether the described field ``name`` can be written (True when it is not described)."""
    found = next((f for f in fields if str(f["name"]).lower() == name.lower()), None)
    return found is None or _writable(found)


def taken_fields(pair: Mapping[str, Any]) -> set[str]:
    """Salesforce fields (lowercase) a new rule may not map: mapped already, or the external id."""
    return {r["salesforce"].lower() for r in pair.get("fields") or []} | {pair["salesforce"]["externalIdField"].lower()}


@dataclass(frozen=True)
class SuggestionRow:
    app: str
    # mapped or ignored in the draft, else the API's tier: auto, suggested or unmapped.
    status: str
    mapped_to: str | None
    # For a mapped field: a better candidate than the one mapped, if the API finds one.
    instead: dict[str, Any] | None
    # The API's candidates no rule of the draft maps, best first.
    candidates: list[dict[str, Any]]
    others: list[Choice]
    # The draft does something else with the field than the saved configuration.
    changed: bool

    @property
    def best(self) -> str | None:
        return self.candidates[0]["salesforce"] if self.candidates else None


def suggestion_rows(
    suggested: Sequence[Mapping[str, Any]], pair: Mapping[str, Any], fields: Sequence[Mapping[str, Any]]
) -> list[SuggestionRow]:
    """The API's suggestions (made for the saved configuration) as the draft now stands."""
    rules = {r["app"]: r["salesforce"] for r in pair.get("fields") or []}
    ignored = set(pair.get("ignoredFields") or [])
    taken = taken_fields(pair)
    rows = []
    for item in suggested:
        app = item["app"]
        candidates = [c for c in item["candidates"] if c["salesforce"].lower() not in taken]
        named = {c["salesforce"].lower() for c in candidates}
        others = [c for c in field_choices(fields, taken) if c.name.lower() not in named]
        mapped_to = rules.get(app)
        instead = None
        if mapped_to is not None:
            status = "mapped"
            top = item["candidates"][0] if item["candidates"] else None
            if top is not None and top["salesforce"].lower() != mapped_to.lower():
                instead = dict(top)
        elif app in ignored:
            status = "ignored"
        elif item["status"] in ("mapped", "ignored"):
            # The draft undid what the saved configuration does; the API's tier is for that one.
            status = "suggested" if candidates else "unmapped"
        else:
            status = item["status"]
        saved = (item["status"], item.get("mappedTo")) if item["status"] in ("mapped", "ignored") else ("open", None)
        now = (status, mapped_to) if status in ("mapped", "ignored") else ("open", None)
        rows.append(SuggestionRow(app, status, mapped_to, instead, candidates, others, saved != now))
    return rows


@dataclass
class Placed:
    """The API's field errors, by the part of the page that shows them."""

    rules: dict[str, list[str]] = field(default_factory=dict)
    rules_table: list[str] = field(default_factory=list)
    settings: dict[str, list[str]] = field(default_factory=dict)
    filter: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.rules, self.rules_table, self.settings, self.filter, self.ignored, self.other))


def place(errors: Sequence[Mapping[str, str]], index: int, rule_apps: Sequence[str]) -> Placed:
    """Each error next to what it names: a rule of the pair (``index`` in the document, its rules'
    app fields in order), its rules as a whole, a setting, its filter, or else in a list by its path."""
    placed = Placed()
    for error in errors:
        where, message = error.get("field", ""), error.get("message", "")
        if where == "soql":  # filter:validate's
            placed.filter.append(message)
            continue
        found = _PAIR_PATH.fullmatch(where)
        if found is None or int(found[1]) != index:
            placed.other.append(f"{where}: {message}" if where else message)
            continue
        key, position, rest = found[2] or "", found[3], found[4]
        said = f"{rest}: {message}" if rest else message
        if key == "fields" and position is not None and int(position) < len(rule_apps):
            placed.rules.setdefault(rule_apps[int(position)], []).append(said)
        elif key == "fields":
            placed.rules_table.append(message)
        elif key == "filter":
            placed.filter.append(message if rest == "soql" else said)
        elif key == "ignoredFields":
            placed.ignored.append(message)
        elif key in _PAIR_SETTINGS:
            placed.settings.setdefault(key, []).append(said)
        else:
            placed.settings.setdefault("", []).append(f"{key}{'.' + rest if rest else ''}: {message}")
    return placed


@dataclass(frozen=True)
class FilterMessage:
    """A problem of a SOQL clause, with the clause cut where its column points (when it names one)."""

    message: str
    column: int | None
    before: str = ""
    at: str = ""
    after: str = ""


def filter_messages(messages: Sequence[str], soql: str) -> list[FilterMessage]:
    found = []
    for message in messages:
        column = _COLUMN.match(message)
        if column is None:
            found.append(FilterMessage(message, None))
            continue
        offset = int(column[1]) - 1
        found.append(
            FilterMessage(message, offset + 1, soql[:offset], soql[offset : offset + 1] or " ", soql[offset + 1 :])
        )
    return found


@dataclass(frozen=True)
class RuleRow:
    app: str
    salesforce: str
    direction: str
    policy: str
    one_way: bool
    transform: str
    # added or changed in the draft, or "".
    mark: str
    drift: list[dict[str, Any]]
    paused: bool
    errors: list[str]


def transform_text(rule: Mapping[str, Any]) -> str:
    """A rule's transform (and reference, typed filters, blanks) in words."""
    parts = []
    transform = rule.get("transform") or {}
    if transform:
        text = str(transform["type"])
        if transform.get("maxLength"):
            text += f", at most {transform['maxLength']} characters"
        if transform.get("valueMap"):
            text += ": " + ", ".join(f"{a} → {s}" for a, s in transform["valueMap"].items())
        parts.append(text)
    if rule.get("reference"):
        ref = rule["reference"]
        parts.append(f"reference to {ref['object']} ({ref.get('onUnresolved', 'hold')} until linked)")
    if rule.get("classify"):
        parts.append(f"classified by {len(rule['classify'])} SOQL clause(s)")
    if rule.get("allowNulls"):
        parts.append("blanks overwrite")
    return "; ".join(parts) or "—"


def condition_text(condition: Mapping[str, Any]) -> str:
    """One condition of a pair's app or Salesforce filter in words."""
    name = condition["field"]
    if "in" in condition:
        return f"{name} in {', '.join(str(v) for v in condition['in'])}"
    if condition.get("notNull"):
        return f"{name} is not blank"
    return f"{name} = {condition.get('equals')}"


def rule_rows(
    pair: Mapping[str, Any],
    saved: Mapping[str, Any] | None,
    drift: Mapping[str, list[dict[str, Any]]],
    placed: Placed,
) -> list[RuleRow]:
    """The draft pair's rules, each with what the draft changed, its drift warnings and its errors."""
    before = {r["app"]: r for r in (saved or {}).get("fields") or []}
    rows = []
    for rule in pair.get("fields") or []:
        app = rule["app"]
        was = before.get(app)
        mark = "added" if was is None else "changed" if was != rule else ""
        warnings = drift.get(app, [])
        rows.append(
            RuleRow(
                app=app,
                salesforce=rule["salesforce"],
                direction=str(rule.get("direction") or ""),
                policy=str(rule.get("conflictPolicy") or ""),
                one_way=_effective_direction(pair, rule) != Direction.BOTH.value,
                transform=transform_text(rule),
                mark=mark,
                drift=warnings,
                paused=any(w["paused"] for w in warnings),
                errors=placed.rules.get(app, []),
            )
        )
    return rows


def removed_rules(pair: Mapping[str, Any], saved: Mapping[str, Any] | None) -> list[str]:
    kept = {r["app"] for r in pair.get("fields") or []}
    return [r["app"] for r in (saved or {}).get("fields") or [] if r["app"] not in kept]


def drift_of(warnings: Sequence[Mapping[str, Any]], pair: str) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The pair's drift warnings: by the app field of the rule each touches, and the pair's own."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    own = []
    for warning in warnings:
        if warning["objectPair"] != pair:
            continue
        if warning.get("appField"):
            by_rule.setdefault(warning["appField"], []).append(dict(warning))
        else:
            own.append(str(warning["message"]))
    return by_rule, own


def shown(value: Any) -> str:
    """A value of a plan's before or after in one line."""
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


@dataclass(frozen=True)
class PlanLine:
    what: str
    kind: str
    # (key, before, after) for each key that differs.
    details: list[tuple[str, str, str]]


def plan_lines(changes: Sequence[Mapping[str, Any]]) -> list[PlanLine]:
    """A plan's rule changes, each with only the keys that differ."""
    lines = []
    for change in changes:
        before, after = change.get("before") or {}, change.get("after") or {}
        keys = [k for k in dict.fromkeys([*after, *before]) if before.get(k) != after.get(k)]
        if change.get("appField"):
            what = f"{change['objectPair']}: rule {change['appField']}"
        else:
            what = f"{change['objectPair']}: the pair" + ("'s settings" if change["change"] == "changed" else "")
        if change["change"] == "changed":
            details = [(k, shown(before.get(k)), shown(after.get(k))) for k in keys]
        else:
            details = []
        lines.append(PlanLine(what, str(change["change"]), details))
    return lines


def sample_columns(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in samples for k in row))


# ---------------------------------------------------------------------------------------------
# The routes


@dataclass
class Reads:
    """What the page shows besides the draft, as the API answers the signed-in user."""

    current: dict[str, Any]
    drift: dict[str, Any]
    suggestions: dict[str, Any] | None = None
    suggestions_note: str | None = None
    described: dict[str, Any] | None = None
    described_note: str | None = None
    app_schema: dict[str, Any] | None = None

    @property
    def sf_fields(self) -> list[dict[str, Any]]:
        return list((self.described or {}).get("fields") or [])

    def app_type(self, app: str) -> str:
        """The app field's declared type as a transform type; none for a reference, which needs a target pair."""
        declared = next((f for f in (self.app_schema or {}).get("fields") or [] if f["name"] == app), None)
        kind = str(declared["type"]) if declared else ""
        return "" if kind == FieldType.REFERENCE.value else kind


@dataclass
class Outcome:
    """What a button did, for the page to say."""

    status: int = 200
    errors: list[dict[str, str]] = field(default_factory=list)
    # A problem of an edit or of a call, by the part of the page that shows it.
    notes: dict[str, str] = field(default_factory=dict)
    preview: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    # What was typed into "Add a rule", kept until a rule is added from it.
    new: dict[str, str] = field(default_factory=dict)

    def refused(self, problem: ApiProblemError, where: str) -> None:
        self.status = problem.status
        self.errors = problem.errors
        self.notes[where] = problem.detail


async def _optional(api: Api, path: str) -> tuple[dict[str, Any] | None, str | None]:
    """The API's answer, or why there is none yet (a 404: not declared, not described)."""
    try:
        answer: dict[str, Any] = await api.get(path)
    except ApiProblemError as problem:
        if problem.status != 404:
            raise
        return None, problem.detail
    return answer, None


async def _reads(api: Api, tenant: str, pair: str) -> Reads:
    t = segment(tenant)
    current = await api.get(f"/tenants/{t}")
    try:
        saved = pair_of(current["document"], pair)
    except DraftError:
        raise ApiProblemError(404, f"tenant '{tenant}' has no object pair {pair!r}") from None
    (suggestions, why), drift, (described, undescribed), (app_schema, _) = await asyncio.gather(
        _optional(api, f"/tenants/{t}/pairs/{segment(pair)}/suggestions"),
        api.get(f"/tenants/{t}/schema/drift"),
        _optional(api, f"/tenants/{t}/schema/objects/{segment(saved['salesforce']['object'])}"),
        _optional(api, f"/tenants/{t}/app-schema/{segment(saved['app']['object'])}"),
    )
    return Reads(current, drift, suggestions, why, described, undescribed, app_schema)


def _edit(draft: Document, pair: str, op: str, form: Mapping[str, str], reads: Reads) -> Document:
    """The draft after the button ``op`` (``verb:app[:salesforce]``) that only edits it."""
    verb, _, arg = op.partition(":")
    app, _, salesforce = arg.partition(":")
    if verb == "remove":
        return without_rule(draft, pair, app)
    if verb == "ignore":
        return ignoring(draft, pair, app)
    if verb == "unignore":
        return not_ignoring(draft, pair, app)
    if verb in ("confirm", "pick"):
        chosen = salesforce if verb == "confirm" else form.get(f"pick-{app}", "")
        if not chosen:
            raise DraftError(f"choose a Salesforce field for {app}", SUGGESTIONS)
        rule = new_rule(app, chosen, transform_type=reads.app_type(app), writable=writable(reads.sf_fields, chosen))
        try:
            return with_rule(draft, pair, rule)
        except DraftError as error:
            raise DraftError(str(error), SUGGESTIONS) from None
    if verb == "add":
        chosen = form.get("newSalesforce", "")
        rule = new_rule(
            form.get("newApp", ""),
            chosen,
            direction=form.get("newDirection", ""),
            conflict_policy=form.get("newPolicy", ""),
            transform_type=form.get("newTransform", ""),
            writable=writable(reads.sf_fields, chosen),
        )
        return with_rule(draft, pair, rule)
    if verb == "update":
        return draft
    raise DraftError(f"the page sent an unknown action {op!r}; open the pair's page again")


def _render(
    web: Web, request: Request, tenant: str, pair: str, reads: Reads, draft: Document, base: int, outcome: Outcome
) -> Response:
    document = reads.current["document"]
    saved = pair_of(document, pair)
    edited = pair_of(draft, pair)
    index = pair_index(draft, pair)
    placed = place(outcome.errors, index, [r["app"] for r in edited.get("fields") or []])
    by_rule, pair_drift = drift_of(reads.drift["warnings"], pair)
    rows = rule_rows(edited, saved, by_rule, placed)
    soql = str((edited.get("filter") or {}).get("soql") or "")
    suggestions = reads.suggestions or {}
    poll, custom = poll_choice(edited.get("schedule"))
    mapped = {r["app"] for r in edited.get("fields") or []}
    return web.render(
        request,
        "mappings.html",
        status_code=outcome.status,
        tenant=tenant,
        pair=pair,
        version=reads.current,
        base=base,
        draft=draft_text(draft),
        dirty=draft != document,
        edited=edited,
        rows=rows,
        removed=removed_rules(edited, saved),
        pair_drift=pair_drift,
        placed=placed,
        outcome=outcome,
        suggestions=suggestion_rows(suggestions.get("fields") or [], edited, reads.sf_fields),
        suggestions_note=reads.suggestions_note,
        described_note=reads.described_note,
        choices=field_choices(reads.sf_fields, taken_fields(edited)),
        app_fields=[f["name"] for f in (reads.app_schema or {}).get("fields") or [] if f["name"] not in mapped],
        soql=soql,
        filter_messages=filter_messages(placed.filter, soql),
        conditions=[
            (side, condition_text(c))
            for side in ("app", "salesforce")
            for c in (edited.get("filter") or {}).get(side) or []
        ],
        plan_lines=plan_lines((outcome.plan or {}).get("changes") or []),
        sample_columns=sample_columns,
        poll=poll,
        poll_custom=custom,
        directions=DIRECTIONS,
        policies=CONFLICT_POLICIES,
        delete_policies=DELETE_POLICIES,
        transform_types=TRANSFORM_TYPES,
        reconcile=RECONCILE,
        poll_seconds=POLL_SECONDS,
        on_leave=ON_LEAVE,
    )


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    @pages.get("/tenants/{tenant}/pairs/{pair}")
    async def pair_page(request: Request, tenant: str, pair: str) -> Response:
        api = await signed_in(web, request)
        reads = await _reads(api, tenant, pair)
        return _render(
            web, request, tenant, pair, reads, reads.current["document"], reads.current["version"], Outcome()
        )

    @pages.post("/tenants/{tenant}/pairs/{pair}")
    async def pair_edit(request: Request, tenant: str, pair: str) -> Response:
        form = await form_of(request)
        api = await signed_in(web, request)
        reads = await _reads(api, tenant, pair)
        try:
            draft = laid_over(load_draft(form.get("draft"), pair), pair, form)
        except DraftError as error:
            raise ApiProblemError(400, str(error)) from None
        base = int(form["base"]) if form.get("base", "").isdigit() else reads.current["version"]
        outcome = Outcome()
        op = form.get("op", "update")
        t = segment(tenant)
        if op == "validate":
            await _validate(api, t, pair, draft, outcome)
        elif op == "plan":
            try:
                outcome.plan = await api.call("POST", f"/tenants/{t}/plan", json=draft)
            except ApiProblemError as problem:
                outcome.refused(problem, PLAN)
        elif op == "save":
            current = reads.current["version"]
            # Saved over the newest version, whatever the draft began from: other pairs' changes stay.
            draft = spliced(reads.current["document"], draft, pair)
            if base != current:
                outcome.status = 409
                outcome.notes[PLAN] = (
                    f"version {current} was applied by {reads.current['appliedBy']} since this draft was started"
                    f" from version {base}: the draft now sits on it (its other pairs as they are now); Plan shows"
                    f" what it would change, Save again to replace {pair} with the draft's"
                )
                base = current
            else:
                try:
                    applied = await api.call("PUT", f"/tenants/{t}", json=draft)
                except ApiProblemError as problem:
                    outcome.refused(problem, PLAN)
                else:
                    return back(f"/tenants/{t}/pairs/{segment(pair)}", _saved(applied))
        else:
            try:
                draft = _edit(draft, pair, op, form, reads)
            except DraftError as error:
                outcome.status = 422
                outcome.notes[error.where] = str(error)
            else:
                if op == "add":
                    return _render(web, request, tenant, pair, reads, draft, base, outcome)
        outcome.new = {k: form.get(k, "") for k in NEW_RULE}
        return _render(web, request, tenant, pair, reads, draft, base, outcome)

    return pages


async def _validate(api: Api, t: str, pair: str, draft: Document, outcome: Outcome) -> None:
    soql = (pair_of(draft, pair).get("filter") or {}).get("soql")
    if not soql:
        outcome.status = 422
        outcome.notes[FILTER] = "write a WHERE clause to validate"
        return
    try:
        outcome.preview = await api.post(f"/tenants/{t}/pairs/{segment(pair)}/filter:validate", {"soql": soql})
    except ApiProblemError as problem:
        outcome.refused(problem, FILTER)


def _saved(applied: Mapping[str, Any]) -> str:
    if not applied["changed"]:
        return f"nothing to save: version {applied['version']} already says this"
    warnings = "; ".join(f"{w['field']}: {w['message']}" for w in applied.get("warnings") or [])
    return f"saved as version {applied['version']}" + (f" (warnings: {warnings})" if warnings else "")

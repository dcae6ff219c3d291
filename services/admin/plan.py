"""A dry run of a proposed configuration against the current one: what would change. Pure.

:func:`rule_changes` compares the pairs and their rules by name (not by position, as a document
diff does), so a rule moved in the list is no change and a renamed field reads as one removed and
one added. :func:`filter_questions` names, for each pair whose Salesforce filter changes, the
records that would enter and leave it as SOQL clauses the admin API counts and samples; a new pair
is asked how many records its backfill would read. Nothing here reads or writes anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from services.common.pair_filters import pair_clause
from services.common.tenant_config import FieldMapping, ObjectPair, TenantConfig

Kind = Literal["added", "removed", "changed"]
# cdc-ingest's defaults: records per REST page, the count above which a backfill goes by Bulk 2.0,
# and rows per Bulk result page (CdcIngestSettings.poll_page_size, bulk_threshold, bulk_page_size).
REST_PAGE = 2000
BULK_THRESHOLD = 2000
BULK_PAGE = 10_000


@dataclass(frozen=True)
class RuleChange:
    pair: str
    # None for a change of the pair itself (added, removed, its direction, policies or filter).
    app_field: str | None
    kind: Kind
    before: Any = None
    after: Any = None


def _rule(rule: FieldMapping) -> dict[str, Any]:
    return rule.model_dump(mode="json", by_alias=True, exclude_none=True)


def _pair_settings(pair: ObjectPair) -> dict[str, Any]:
    return pair.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"fields"})


def rule_changes(current: TenantConfig | None, proposed: TenantConfig) -> list[RuleChange]:
    before = {p.name: p for p in current.spec.objects} if current is not None else {}
    after = {p.name: p for p in proposed.spec.objects}
    changes: list[RuleChange] = []
    for name in [*after, *(n for n in before if n not in after)]:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            kind: Kind = "added" if old is None else "removed"
            was = None if old is None else _pair_settings(old)
            changes.append(RuleChange(name, None, kind, was, None if new is None else _pair_settings(new)))
            continue
        if _pair_settings(old) != _pair_settings(new):
            changes.append(RuleChange(name, None, "changed", _pair_settings(old), _pair_settings(new)))
        old_rules = {r.app: _rule(r) for r in old.fields}
        new_rules = {r.app: _rule(r) for r in new.fields}
        for field in [*new_rules, *(f for f in old_rules if f not in new_rules)]:
            was, now = old_rules.get(field), new_rules.get(field)
            if was != now:
                kind = "added" if was is None else "removed" if now is None else "changed"
                changes.append(RuleChange(name, field, kind, was, now))
    return changes


@dataclass(frozen=True)
class FilterQuestion:
    """What to count for one pair: records entering (and leaving) its Salesforce filter."""

    pair: str
    salesforce_object: str
    # A WHERE clause (None: every record), and the same for leaving (None: nothing leaves).
    entering: str | None
    leaving: str | None
    # The pair is new: entering is what its first backfill reads.
    new_pair: bool


def _clause(pair: ObjectPair | None) -> str | None:
    return None if pair is None else pair_clause(pair)


def filter_questions(current: TenantConfig | None, proposed: TenantConfig) -> list[FilterQuestion]:
    before = {p.name: p for p in current.spec.objects} if current is not None else {}
    questions: list[FilterQuestion] = []
    for pair in proposed.spec.objects:
        old = before.get(pair.name)
        new_clause, old_clause = _clause(pair), _clause(old)
        if old is None:
            questions.append(FilterQuestion(pair.name, pair.salesforce.object, new_clause, None, new_pair=True))
        elif new_clause != old_clause:
            entering = _and_not(new_clause, old_clause)
            leaving = _and_not(old_clause, new_clause)
            questions.append(FilterQuestion(pair.name, pair.salesforce.object, entering, leaving, new_pair=False))
    return questions


def _and_not(kept: str | None, dropped: str | None) -> str | None:
    """Records ``kept`` selects and ``dropped`` did not (None: every record); "" when none can."""
    if dropped is None:
        return ""
    if kept is None:
        return f"NOT ({dropped})"
    return f"({kept}) AND NOT ({dropped})"


def backfill_calls(records: int) -> int:
    """API calls a first backfill of ``records`` costs: a count, then REST pages or a Bulk 2.0 job."""
    if records > BULK_THRESHOLD:
        # The job's creation, a status poll or so per second it runs (three assumed), its result pages.
        return 1 + 1 + 3 + max(1, math.ceil(records / BULK_PAGE))
    return 1 + max(1, math.ceil(records / REST_PAGE))

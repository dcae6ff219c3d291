"""What of an object pair's filters SOQL can select, as one WHERE clause, and the structured
conditions (``filter.app`` / ``filter.salesforce``) as one record's values meet them. Pure.

A pair's ``filter.soql`` and, for each typed-filter rule, "one of its clauses": cdc-ingest pushes
it into backfills, and the admin API's plan counts the records entering and leaving it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.common.soql_filter import parse_where, render
from services.common.tenant_config import ObjectPair
from services.common.tenant_config.model import FilterCondition
from services.common.values import Value, is_blank


def holds(condition: FilterCondition, value: Value) -> bool:
    """Whether one field's value meets one structured condition."""
    if condition.not_null:
        return not is_blank(value)
    if condition.equals is not None:
        return bool(value == condition.equals)
    return condition.in_ is None or value in condition.in_


def meets(conditions: Iterable[FilterCondition], values: Mapping[str, Value]) -> bool:
    """Whether a record's values (field names in any case) meet every condition; a field the
    record lacks meets none."""
    lowered = {name.lower(): value for name, value in values.items()}
    return all(c.field.lower() in lowered and holds(c, lowered[c.field.lower()]) for c in conditions)


def pair_clause(pair: ObjectPair) -> str | None:
    """The clause, or None when nothing of the pair's filtering is in SOQL (every record may pass)."""
    parts = [render(parse_where(pair.filter.soql))] if pair.filter is not None and pair.filter.soql else []
    parts += [
        " OR ".join(f"({render(parse_where(case.soql))})" for case in rule.classify)
        for rule in pair.fields
        if rule.classify is not None
    ]
    if len(parts) > 1:
        return " AND ".join(f"({part})" for part in parts)
    return parts[0] if parts else None

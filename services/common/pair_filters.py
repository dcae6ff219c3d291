"""What of an object pair's filters SOQL can select, as one WHERE clause. Pure.

A pair's ``filter.soql`` and, for each typed-filter rule, "one of its clauses": cdc-ingest pushes
it into backfills, and the admin API's plan counts the records entering and leaving it.
"""

from __future__ import annotations

from services.common.soql_filter import parse_where, render
from services.common.tenant_config import ObjectPair


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

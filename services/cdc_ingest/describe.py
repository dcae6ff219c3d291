"""What cdc-ingest keeps of an sObject describe. Pure.

Mapping never calls Salesforce: it checks string lengths and read-only fields against the
``crm_object_fields`` row written from here (``deploy/sql/0007_crm_describe.sql``), so the shape
of :func:`field_summary` is a contract with mapping's reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Describe's per-field keys mapping reads; the JSON shape of crm_object_fields.fields.
SUMMARY_KEYS = ("type", "length", "createable", "updateable", "calculated", "nillable")
_FLAGS = ("createable", "updateable", "calculated", "nillable")
MASTER_RECORD_ID = "MasterRecordId"


def field_summary(fields: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: {type, length, createable, updateable, calculated, nillable}}`` of describe's fields.

    Salesforce's describe always has all six; the rule for a missing one is for anything else.
    """
    summary: dict[str, dict[str, Any]] = {}
    for field in fields:
        entry: dict[str, Any] = {"type": str(field["type"])}
        if field.get("length") is not None:
            entry["length"] = int(field["length"])
        # A key describe left out stays out rather than turn false: mapping's reader then takes
        # its permissive default (writable, no length limit) instead of refusing the field.
        entry.update({flag: bool(field[flag]) for flag in _FLAGS if field.get(flag) is not None})
        summary[str(field["name"])] = entry
    return summary


def is_mergeable(describe: Mapping[str, Any]) -> bool:
    """Whether records of the object can be merged (so a DELETE may be a merge loser's)."""
    if describe.get("mergeable"):
        return True
    # Older describes (and some objects) leave the flag out; the field is what a merge writes.
    return any(field.get("name") == MASTER_RECORD_ID for field in describe.get("fields") or ())

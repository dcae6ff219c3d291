"""What cdc-ingest reads of an sObject describe besides the field summary mapping reads
(:func:`services.common.schema.field_summary`). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASTER_RECORD_ID = "MasterRecordId"


def is_mergeable(describe: Mapping[str, Any]) -> bool:
    """Whether records of the object can be merged (so a DELETE may be a merge loser's)."""
    if describe.get("mergeable"):
        return True
    # Older describes (and some objects) leave the flag out; the field is what a merge writes.
    return any(field.get("name") == MASTER_RECORD_ID for field in describe.get("fields") or ())

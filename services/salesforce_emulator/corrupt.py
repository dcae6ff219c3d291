"""Change events no subscriber can decode, for testing how one handles bad input (a fault, not Salesforce).

The default is the failure that once looped cdc-ingest's stream: a well-formed header, then an
object field naming a branch its ``["null", T]`` union does not have (fastavro raises IndexError).
"""

from __future__ import annotations

from services.salesforce_emulator.cdc import ChangeEventSchema, encode_change
from services.salesforce_emulator.changes import CommittedTransaction, RecordChange

# Zigzag 5: union branch 5 of a two-branch union.
_NO_SUCH_BRANCH = b"\x0a"


def bad_union_branch(schema: ChangeEventSchema, org_id: str, now_ms: int) -> bytes:
    """A payload of ``schema`` whose header decodes and whose first object field cannot."""
    transaction = CommittedTransaction(
        org_id=org_id,
        transaction_key="corrupt",
        commit_timestamp_ms=now_ms,
        commit_number=now_ms,
        commit_user="",
        change_origin="",
        changes=(),
    )
    # A gap event: its header, then the all-null body (one branch index per object field).
    valid = encode_change(schema, transaction, RecordChange(schema.entity, "GAP_UPDATE", (), {}), 1)
    body = schema.all_null
    return valid[: -len(body)] + _NO_SUCH_BRANCH + body[1:]

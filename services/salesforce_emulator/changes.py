"""The seam between the record store and Change Data Capture.

The store publishes one :class:`CommittedTransaction` per committed write transaction, after it is
durable; the CDC layer turns it into Pub/Sub change events. Nothing else flows between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

ChangeType = Literal[
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
]

# A field value in its REST JSON form: strings for text, dates ("2024-05-01") and datetimes
# ("2024-05-01T12:00:00.000+0000"), numbers, booleans, or None.
JsonValue = str | int | float | bool | None


@dataclass(frozen=True)
class RecordChange:
    """One record's change within a transaction.

    ``values`` uses flat API field names (``BillingCity``, never ``BillingAddress``):
    on CREATE and UNDELETE every populated field, on UPDATE the new values of the changed fields,
    on DELETE nothing. ``changed_fields`` (UPDATE only) always includes ``LastModifiedDate``;
    ``nulled_fields`` lists fields explicitly set to null.
    """

    entity: str
    change_type: ChangeType
    record_ids: tuple[str, ...]
    values: Mapping[str, JsonValue]
    changed_fields: tuple[str, ...] = ()
    nulled_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommittedTransaction:
    """Everything one API request (or Bulk batch) committed, in order.

    A change's ``sequenceNumber`` in CDC is its index in ``changes`` plus one.
    """

    org_id: str
    transaction_key: str
    commit_timestamp_ms: int
    commit_number: int
    commit_user: str
    # "com/salesforce/api/rest/62.0;client=duplex", or "" for changes with no API origin.
    change_origin: str
    changes: tuple[RecordChange, ...]


class ChangeSink(Protocol):
    """Receives committed transactions, in commit order, exactly once each."""

    def publish(self, transaction: CommittedTransaction) -> None:
        """Take a committed transaction. Must not block on I/O for long: the store calls it inline."""

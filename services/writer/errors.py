"""Which Salesforce failures are worth retrying.

Retryable: the same request may succeed later (locks, outages, quota, expired sessions, and the
placeholders Salesforce puts on records that were only rolled back because another failed).
Everything else is permanent: retrying cannot fix the record, so it goes to the DLQ and the sync
log with Salesforce's code, to be replayed after a fix.
"""

from __future__ import annotations

import enum

# Records rolled back because another record of an all-or-none request failed: not their fault.
ROLLBACK_PLACEHOLDERS = frozenset({"ALL_OR_NONE_OPERATION_ROLLED_BACK", "PROCESSING_HALTED"})

RETRYABLE_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "SERVER_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "INVALID_SESSION_ID",
        "QUERY_TIMEOUT",
        "REQUEST_RUNNING_TOO_LONG",
        *ROLLBACK_PLACEHOLDERS,
    }
)


class Failure(enum.StrEnum):
    RETRYABLE = "retryable"
    # Refresh the OAuth token, then retry.
    REAUTHENTICATE = "reauthenticate"
    PERMANENT = "permanent"


def classify(status_code: str, http_status: int | None = None) -> Failure:
    """How to treat a failure with Salesforce's ``statusCode`` / ``errorCode`` and HTTP status."""
    if status_code == "INVALID_SESSION_ID" or http_status == 401:
        return Failure.REAUTHENTICATE
    if status_code in RETRYABLE_CODES:
        return Failure.RETRYABLE
    if http_status is not None and (http_status >= 500 or http_status in {408, 429}):
        return Failure.RETRYABLE
    return Failure.PERMANENT

"""Batches as Salesforce requests, and Salesforce answers as per-record results. Pure: no I/O.

REST goes through sObject Collections with ``allOrNone: false``, so one bad record never takes
the others down; Bulk API 2.0 jobs upload CSV and answer with CSV result sets whose rows echo the
columns we sent, which is how a result row is matched back to its write (by the external id for
upserts, by the record id for updates and deletes; creates never go through Bulk for that reason).
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from services.common.values import Value
from services.writer.batching import Batch, Operation, RecordWrite
from services.writer.errors import Failure, classify

# Bulk CSV: an empty cell leaves a field unchanged; this marker sets it to null.
BULK_NULL = "#N/A"

# The writer's own code for a value no request body can carry (see ``unsendable``).
INVALID_VALUE = "INVALID_VALUE"

# Deleting a record that a previous attempt (before a crash) already deleted is success.
ALREADY_DELETED = frozenset({"ENTITY_IS_DELETED"})


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    # Not sent: this version of the link, or a newer one, was applied already (versions.py).
    SUPERSEDED = "superseded"
    # Not settled: try again later (lock, outage, rolled back with another record, quota).
    RETRY = "retry"


@dataclass(frozen=True)
class ItemError:
    status_code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class WriteResult:
    write: RecordWrite
    outcome: Outcome
    record_id: str = ""
    created: bool = False
    errors: tuple[ItemError, ...] = ()
    # RETRY only: the whole call failed (outage, budget), not this record; and when to try again.
    whole_call: bool = False
    retry_at: datetime | None = None

    @property
    def code(self) -> str:
        return self.errors[0].status_code if self.errors else ""


# ----------------------------------------------------------------------------- values


def to_salesforce(value: Value) -> Any:
    """A field value in Salesforce's REST JSON form."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        # A JSON string keeps every digit; Salesforce parses numeric strings for number fields.
        return str(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        moment = aware.astimezone(UTC).replace(tzinfo=None)
        # isoformat, not %Y: strftime leaves years before 1000 unpadded, which Salesforce cannot read.
        return moment.isoformat(timespec="milliseconds") + "+0000"
    if isinstance(value, date):
        return value.isoformat()
    return ";".join(value)


def unsendable(write: RecordWrite) -> ItemError | None:
    """Why ``write`` cannot go into a request body, or None.

    A non-finite number or text that is not Unicode (a lone surrogate) has no JSON form: the call
    would fail before it is made, every time, so retrying would hold the write, and its batch, for ever.
    """
    for name, value in write.fields.items():
        try:
            # As httpx encodes a JSON body.
            json.dumps([name, to_salesforce(value)], ensure_ascii=False, allow_nan=False).encode()
        except ValueError as exc:  # UnicodeEncodeError included
            problem = "not a finite number" if isinstance(value, float) else f"{type(exc).__name__}: {exc}"
            return ItemError(INVALID_VALUE, f"{name}: cannot be sent to Salesforce ({problem})", (name,))
    return None


def to_csv_cell(value: Value) -> str:
    """A field value as a Bulk API 2.0 CSV cell."""
    if value is None:
        return BULK_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(to_salesforce(value))


def _fields_without(fields: Mapping[str, Value], excluded: str) -> dict[str, Any]:
    # Salesforce refuses the external-id field in the body of an upsert; its value is the key.
    lowered = excluded.lower()
    return {name: to_salesforce(value) for name, value in fields.items() if name.lower() != lowered}


# ----------------------------------------------------------------------------- REST


@dataclass(frozen=True)
class RestRequest:
    method: str
    path: str  # relative to the versioned API base
    json: Any = None
    params: Mapping[str, str] | None = None


def collection_request(batch: Batch) -> RestRequest:
    """The sObject Collections call for ``batch`` (at most 200 records)."""
    obj = batch.crm_object
    if batch.operation is Operation.DELETE:
        ids = ",".join(w.record_id for w in batch.writes)
        return RestRequest("DELETE", "/composite/sobjects", params={"ids": ids, "allOrNone": "false"})
    records: list[dict[str, Any]] = []
    for write in batch.writes:
        record: dict[str, Any] = {"attributes": {"type": obj}}
        if batch.operation is Operation.UPSERT:
            record |= _fields_without(write.fields, write.external_id_field)
            record[write.external_id_field] = write.external_id_value
        elif batch.operation is Operation.UPDATE:
            record |= _fields_without(write.fields, "Id")
            record["id"] = write.record_id
        else:
            record |= _fields_without(write.fields, "Id")
        records.append(record)
    body = {"allOrNone": False, "records": records}
    if batch.operation is Operation.UPSERT:
        return RestRequest("PATCH", f"/composite/sobjects/{obj}/{batch.external_id_field}", json=body)
    if batch.operation is Operation.UPDATE:
        return RestRequest("PATCH", "/composite/sobjects", json=body)
    return RestRequest("POST", "/composite/sobjects", json=body)


def _errors(raw: Any) -> tuple[ItemError, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        ItemError(
            str(e.get("statusCode") or e.get("errorCode") or "UNKNOWN_EXCEPTION"),
            str(e.get("message", "")),
            tuple(str(f) for f in e.get("fields") or ()),
        )
        for e in raw
        if isinstance(e, dict)
    )


def failed(write: RecordWrite, errors: tuple[ItemError, ...]) -> WriteResult:
    """The result of a failed write: retried or rejected, by its first error code."""
    code = errors[0].status_code if errors else "UNKNOWN_EXCEPTION"
    if write.operation is Operation.DELETE and code in ALREADY_DELETED:
        return WriteResult(write, Outcome.SUCCEEDED, record_id=write.record_id)
    outcome = Outcome.REJECTED if classify(code) is Failure.PERMANENT else Outcome.RETRY
    return WriteResult(write, outcome, record_id=write.record_id, errors=errors)


def collection_results(batch: Batch, body: Any) -> list[WriteResult]:
    """Per-record results of a Collections response (a SaveResult/UpsertResult list in input order)."""
    if not isinstance(body, list) or len(body) != len(batch.writes):
        size = len(body) if isinstance(body, list) else "no list"
        raise ValueError(f"Collections answered {size} results for {len(batch.writes)} records")
    results = []
    for write, item in zip(batch.writes, body, strict=True):
        if item.get("success"):
            created = bool(item.get("created", batch.operation is Operation.CREATE))
            results.append(WriteResult(write, Outcome.SUCCEEDED, str(item.get("id") or write.record_id), created))
        else:
            results.append(failed(write, _errors(item.get("errors"))))
    return results


# ----------------------------------------------------------------------------- Bulk API 2.0

_BULK_OPERATION = {Operation.UPSERT: "upsert", Operation.UPDATE: "update", Operation.DELETE: "delete"}


def bulk_supported(operation: Operation) -> bool:
    """Creates without an external id cannot be matched to their result rows, so they stay on REST."""
    return operation in _BULK_OPERATION


def bulk_job_request(batch: Batch) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": batch.crm_object,
        "operation": _BULK_OPERATION[batch.operation],
        "contentType": "CSV",
        "columnDelimiter": "COMMA",
        "lineEnding": "LF",
    }
    if batch.operation is Operation.UPSERT:
        body["externalIdFieldName"] = batch.external_id_field
    return body


def _key_column(batch: Batch) -> str:
    return batch.external_id_field if batch.operation is Operation.UPSERT else "Id"


def _key_of(batch: Batch, write: RecordWrite) -> str:
    return write.external_id_value if batch.operation is Operation.UPSERT else write.record_id


def bulk_csv(batch: Batch) -> str:
    """The job's CSV: the key column first, then every field any write sets (empty = unchanged)."""
    key = _key_column(batch)
    columns: list[str] = []
    if batch.operation is not Operation.DELETE:
        seen = {key.lower()}
        for write in batch.writes:
            for name in write.fields:
                if name.lower() not in seen:
                    seen.add(name.lower())
                    columns.append(name)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key, *columns])
    for write in batch.writes:
        writer.writerow([_key_of(batch, write), *(_cell(write.fields, c) for c in columns)])
    return out.getvalue()


def _cell(fields: Mapping[str, Value], column: str) -> str:
    if column in fields:
        return to_csv_cell(fields[column])
    return ""


def _rows(text: str) -> list[dict[str, str]]:
    if not text.strip():
        return []
    return list(csv.DictReader(io.StringIO(text, newline="")))


def parse_bulk_error(text: str) -> ItemError:
    """``STATUS_CODE:message:field1,field2 --`` (the ``sf__Error`` column)."""
    code, _, rest = text.partition(":")
    rest = rest.removesuffix(" --")
    message, _, fields = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    return ItemError(code.strip() or "UNKNOWN_EXCEPTION", message.strip(), tuple(f for f in fields.split(",") if f))


def bulk_results(
    batch: Batch, successful: str, failed_rows: str, unprocessed: str
) -> tuple[list[WriteResult], list[RecordWrite]]:
    """Results per write, and the writes the job never accounted for (to retry)."""
    key_column = _key_column(batch).lower()
    by_key: dict[str, list[RecordWrite]] = {}
    for write in batch.writes:
        by_key.setdefault(_key_of(batch, write), []).append(write)

    def take(row: Mapping[str, str]) -> RecordWrite | None:
        value = next((v for k, v in row.items() if k is not None and k.lower() == key_column), None)
        candidates = by_key.get(value or "")
        return candidates.pop() if candidates else None

    results: list[WriteResult] = []
    for row in _rows(successful):
        if (succeeded := take(row)) is not None:
            created = row.get("sf__Created", "").lower() == "true"
            results.append(WriteResult(succeeded, Outcome.SUCCEEDED, row.get("sf__Id") or succeeded.record_id, created))
    results.extend(
        failed(refused, (parse_bulk_error(row.get("sf__Error", "")),))
        for row in _rows(failed_rows)
        if (refused := take(row)) is not None
    )
    # Rows the job never processed are retried, and so are rows missing from every result set
    # (which a correct job never has, but losing a write silently would be worse than a retry).
    leftover = [w for row in _rows(unprocessed) if (w := take(row)) is not None]
    leftover += [w for writes in by_key.values() for w in writes]
    return results, leftover


def keys_with_fields(writes: Iterable[RecordWrite], names: Sequence[str]) -> list[RecordWrite]:
    """Writes that set any of ``names`` (Salesforce names the offending field of a refused request)."""
    lowered = {n.lower() for n in names}
    return [w for w in writes if any(f.lower() in lowered for f in w.fields)]

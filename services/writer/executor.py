"""One batch against one tenant's org: sObject Collections calls or a Bulk API 2.0 job.

:meth:`BatchExecutor.execute` never raises for Salesforce's or the network's sake: it returns a
result for every write. A failure of the whole call is either

* transient (outage, timeout, lock, quota, no budget, auth trouble): every write of the call comes
  back as ``RETRY`` with ``whole_call`` set, so the tenant backs off without blaming the records;
* permanent (Salesforce refused the request as a whole, e.g. INVALID_FIELD for an unknown column):
  the offending records are isolated. When Salesforce names the field, the records that set it are
  rejected and the others re-sent in one call; otherwise the batch is halved until each refusal
  is pinned on one record. Bad input costs a few extra calls; good records are never rejected.

A write with a value no request body can carry (a non-finite number, text that is not Unicode) is
rejected before any call (``INVALID_VALUE``), and the rest of its batch is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.common.connections import ConnectionUnavailableError
from services.common.governor_client import BudgetUnavailable, GovernorUnavailable, UnknownTenant
from services.common.salesforce import SalesforceApiError, SalesforceClient
from services.writer.batching import COLLECTION_LIMIT, Batch, RecordWrite, Transport
from services.writer.errors import Failure, classify
from services.writer.payload import (
    ItemError,
    Outcome,
    WriteResult,
    bulk_csv,
    bulk_job_request,
    bulk_results,
    bulk_supported,
    collection_request,
    collection_results,
    keys_with_fields,
    unsendable,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

_TERMINAL = frozenset({"JobComplete", "Failed", "Aborted"})
# How soon a tenant waiting to be connected (again) is tried again: noticing a connect costs a
# database read, no call to Salesforce.
CONNECTION_RECHECK = timedelta(seconds=5)


@dataclass(frozen=True)
class BulkPolling:
    """How a Bulk job is followed: every poll is an API call, so the interval grows."""

    first: float = 0.25
    factor: float = 2.0
    longest: float = 5.0
    give_up_after: float = 1800.0


@dataclass(frozen=True)
class CallFailure:
    error: ItemError
    permanent: bool
    retry_at: datetime | None = None


def call_failure(exc: Exception) -> CallFailure:
    """How to treat an exception raised by one Salesforce call."""
    if isinstance(exc, BudgetUnavailable):
        return CallFailure(ItemError("BUDGET_UNAVAILABLE", str(exc)), permanent=False, retry_at=exc.not_before)
    if isinstance(exc, ConnectionUnavailableError):
        # The tenant's grant, not its records: hold the writes (the tenant pauses) until it is fixed.
        retry_at = datetime.now(UTC) + CONNECTION_RECHECK if exc.awaits_connect else None
        return CallFailure(ItemError("CONNECTION_UNAVAILABLE", str(exc)), permanent=False, retry_at=retry_at)
    if isinstance(exc, GovernorUnavailable | UnknownTenant):
        return CallFailure(ItemError("GOVERNOR_UNAVAILABLE", str(exc)), permanent=False)
    if isinstance(exc, httpx.TimeoutException):
        return CallFailure(ItemError("REQUEST_TIMEOUT", str(exc) or type(exc).__name__), permanent=False)
    if isinstance(exc, httpx.HTTPError):
        return CallFailure(ItemError("CONNECTION_ERROR", str(exc) or type(exc).__name__), permanent=False)
    if isinstance(exc, SalesforceApiError):
        error = ItemError(exc.error_code, exc.message, tuple(exc.fields))
        # OAuth errors (invalid_grant, invalid_client) are lower-case and concern the tenant's
        # connection, not the records: retry after the connection is fixed, never reject data.
        if exc.error_code.islower() or classify(exc.error_code, exc.http_status) is not Failure.PERMANENT:
            return CallFailure(error, permanent=False)
        return CallFailure(error, permanent=True)
    if isinstance(exc, LookupError):  # a secret missing from the environment
        return CallFailure(ItemError("CONFIGURATION_ERROR", str(exc)), permanent=False)
    log.error("unexpected failure of a Salesforce call", exc_info=exc)
    return CallFailure(ItemError("UNKNOWN_EXCEPTION", f"{type(exc).__name__}: {exc}"), permanent=False)


def _sub(batch: Batch, writes: list[RecordWrite] | tuple[RecordWrite, ...]) -> Batch:
    return replace(batch, writes=tuple(writes))


def retry_all(writes: tuple[RecordWrite, ...] | list[RecordWrite], failure: CallFailure) -> list[WriteResult]:
    return [
        WriteResult(
            w, Outcome.RETRY, record_id=w.record_id, errors=(failure.error,), whole_call=True, retry_at=failure.retry_at
        )
        for w in writes
    ]


class BatchExecutor:
    """Writes batches for one tenant through its (budgeted, stamped) Salesforce client."""

    def __init__(
        self,
        client: SalesforceClient,
        *,
        polling: BulkPolling = BulkPolling(),
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._polling = polling
        self._sleep = sleep
        self._clock = clock

    async def execute(self, batch: Batch, *, backfill: bool = False) -> list[WriteResult]:
        refused: list[WriteResult] = []
        sendable: list[RecordWrite] = []
        for write in batch.writes:
            error = unsendable(write)
            if error is None:
                sendable.append(write)
            else:
                refused.append(WriteResult(write, Outcome.REJECTED, record_id=write.record_id, errors=(error,)))
        if not sendable:
            return refused
        if refused:
            batch = _sub(batch, sendable)
        if batch.transport is Transport.BULK and bulk_supported(batch.operation):
            return refused + await self._bulk(batch, backfill)
        return refused + await self._rest_chunks(batch, batch.writes, backfill)

    # ------------------------------------------------------------------ REST

    async def _rest_chunks(
        self, batch: Batch, writes: tuple[RecordWrite, ...] | list[RecordWrite], backfill: bool
    ) -> list[WriteResult]:
        results: list[WriteResult] = []
        for start in range(0, len(writes), COLLECTION_LIMIT):
            results += await self._rest(_sub(batch, writes[start : start + COLLECTION_LIMIT]), backfill)
        return results

    async def _rest(self, batch: Batch, backfill: bool) -> list[WriteResult]:
        request = collection_request(batch)
        try:
            response = await self._client.request(
                request.method,
                self._client.api_base + request.path,
                json=request.json,
                params=request.params,
                backfill=backfill,
            )
            return collection_results(batch, response.json())
        except Exception as exc:  # every failure becomes per-record results (module doc)
            failure = call_failure(exc)
        if not failure.permanent:
            return retry_all(batch.writes, failure)
        return await self._isolate(batch, failure.error, backfill)

    async def _isolate(self, batch: Batch, error: ItemError, backfill: bool) -> list[WriteResult]:
        writes = batch.writes
        if len(writes) == 1:
            return [WriteResult(writes[0], Outcome.REJECTED, record_id=writes[0].record_id, errors=(error,))]
        if error.status_code == "INVALID_FIELD" and error.fields:
            # An unknown or forbidden column fails every record that sets it, and only those.
            culprits = keys_with_fields(writes, error.fields)
            if culprits:
                rejected = [WriteResult(w, Outcome.REJECTED, record_id=w.record_id, errors=(error,)) for w in culprits]
                others = [w for w in writes if w not in culprits]
                return rejected + (await self._rest(_sub(batch, others), backfill) if others else [])
        half = len(writes) // 2
        return await self._rest(_sub(batch, writes[:half]), backfill) + await self._rest(
            _sub(batch, writes[half:]), backfill
        )

    # ------------------------------------------------------------------ Bulk API 2.0

    async def _call(self, method: str, path: str, backfill: bool, **kwargs: Any) -> httpx.Response:
        return await self._client.request(
            method, f"{self._client.api_base}/jobs/ingest{path}", backfill=backfill, **kwargs
        )

    async def _bulk(self, batch: Batch, backfill: bool) -> list[WriteResult]:
        try:
            job = (await self._call("POST", "", backfill, json=bulk_job_request(batch))).json()
        except Exception as exc:
            failure = call_failure(exc)
            if failure.permanent:
                # Refused job (unknown object, bad external id field): REST says which records fail.
                return await self._rest_chunks(batch, batch.writes, backfill)
            return retry_all(batch.writes, failure)
        job_id = str(job["id"])
        try:
            await self._call(
                "PUT",
                f"/{job_id}/batches",
                backfill,
                content=bulk_csv(batch).encode(),
                headers={"Content-Type": "text/csv"},
            )
            await self._call("PATCH", f"/{job_id}", backfill, json={"state": "UploadComplete"})
            state = await self._follow(job_id, backfill)
            successful = (await self._call("GET", f"/{job_id}/successfulResults/", backfill)).text
            failed_rows = (await self._call("GET", f"/{job_id}/failedResults/", backfill)).text
            unprocessed = (await self._call("GET", f"/{job_id}/unprocessedrecords/", backfill)).text
        except Exception as exc:
            # The job may still run; the writes are retried as a new job, and repeating an upsert,
            # an update or a delete by id is harmless.
            return retry_all(batch.writes, call_failure(exc))
        results, leftover = bulk_results(batch, successful, failed_rows, unprocessed)
        log.info(
            "bulk job finished",
            extra={
                "tenant_id": batch.tenant_id,
                "job_id": job_id,
                "state": state["state"],
                "records": len(batch.writes),
                "leftover": len(leftover),
            },
        )
        if leftover and state["state"] == "Failed" and not results:
            # The job failed as a whole (bad header, bad CSV): REST pins the failure on the records.
            return await self._rest_chunks(batch, leftover, backfill)
        error = ItemError(
            "BULK_UNPROCESSED", str(state.get("errorMessage") or f"job {job_id} left the record unprocessed")
        )
        return results + [WriteResult(w, Outcome.RETRY, record_id=w.record_id, errors=(error,)) for w in leftover]

    async def _follow(self, job_id: str, backfill: bool) -> dict[str, Any]:
        interval = self._polling.first
        give_up_at = self._clock() + timedelta(seconds=self._polling.give_up_after)
        while True:
            await self._sleep(interval)
            info: dict[str, Any] = (await self._call("GET", f"/{job_id}", backfill)).json()
            if info.get("state") in _TERMINAL:
                return info
            if self._clock() > give_up_at:
                raise TimeoutError(f"bulk job {job_id} still {info.get('state')} after {self._polling.give_up_after}s")
            interval = min(self._polling.longest, interval * self._polling.factor)

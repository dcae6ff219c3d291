"""Bulk API 2.0 query jobs: ``/services/data/vXX.X/jobs/query``.

A job runs its SOQL when it is created (so its results are a snapshot of that moment) and keeps
the rows as CSV cells. The state it reports follows Salesforce's timeline: ``UploadComplete`` in
the create response, ``InProgress`` until ``processing_seconds`` have passed (0 by default, so
clients that poll once see the end state), then ``JobComplete``, or ``Failed`` with an
``errorMessage`` when the query was refused. Results are paged with opaque locators
(base64 of the next offset, like Salesforce's ``MTAwMDA``) and the literal ``null`` at the end.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures, whose
# Annotated aliases are local to build_bulk_query_router.
import base64
import binascii
import csv
import io
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.query_api import QueryService
from services.salesforce_emulator.soql_engine import (
    Execution,
    RecordSource,
    SchemaFor,
    flat_values,
    parse_rest_datetime,
)
from services.salesforce_emulator.versions import check_resource, check_version

JOB_PREFIX = "750"
DELIMITERS: Mapping[str, str] = {
    "BACKQUOTE": "`",
    "CARET": "^",
    "COMMA": ",",
    "PIPE": "|",
    "SEMICOLON": ";",
    "TAB": "\t",
}
LINE_ENDINGS: Mapping[str, str] = {"LF": "\n", "CRLF": "\r\n"}
# Salesforce picks a page size itself when maxRecords is absent; this is large but bounded.
DEFAULT_MAX_RECORDS = 50_000
# Terminal jobs disappear after 7 days, as in Salesforce.
RETENTION = timedelta(days=7)
TERMINAL_STATES = frozenset({"JobComplete", "Failed", "Aborted"})


def _job_error(code: str, message: str, status: int = 400) -> SalesforceError:
    return SalesforceError(status, code, message)


def rest_datetime(value: datetime) -> str:
    """``2024-05-01T12:00:00.000+0000``: the JSON form of datetimes in JobInfo."""
    utc = value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}+0000"


def csv_cell(kind: str, value: Any) -> str:
    """One value as Bulk CSV writes it: empty for null, ``true``/``false``, datetimes in UTC with ``Z``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "datetime" and isinstance(value, str):
        utc = parse_rest_datetime(value).astimezone(UTC)
        # isoformat, not %Y: strftime leaves years before 1000 unpadded.
        return f"{utc.replace(tzinfo=None).isoformat(timespec='milliseconds')}Z"
    return str(value)


def encode_locator(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(locator + "=" * (-len(locator) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() else None


@dataclass
class QueryJob:
    """One job and, once run, its rows as CSV cells."""

    id: str
    org_id: str
    user_id: str
    operation: str
    query: str
    object_name: str
    column_delimiter: str
    line_ending: str
    api_version: str
    created: datetime
    outcome: str  # JobComplete | Failed
    error_message: str | None = None
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    aborted_at: datetime | None = None


@dataclass(frozen=True)
class ResultsPage:
    csv_text: str
    locator: str  # the next locator, or "null"
    count: int


class BulkQueryJobs:
    """All query jobs of one emulator, per org."""

    def __init__(
        self,
        service: QueryService,
        *,
        ids: IdFactory | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        processing_seconds: float = 0.0,
    ) -> None:
        self._service = service
        self._ids = ids if ids is not None else IdFactory()
        self._now = now
        self._processing = timedelta(seconds=processing_seconds)
        self._jobs: dict[str, QueryJob] = {}
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, ctx: CallContext, body: Any) -> dict[str, Any]:
        """Validate the request, run the query, and return the new job's JobInfo."""
        if not isinstance(body, dict):
            raise _job_error("JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in ("query", "queryAll"):
            raise _job_error("INVALIDJOB", f"Invalid operation for a query job: {operation}")
        soql = body.get("query")
        if not isinstance(soql, str) or not soql.strip():
            raise _job_error("INVALIDJOB", "The query field is required")
        if body.get("contentType", "CSV") != "CSV":
            raise _job_error("INVALIDJOB", f"Unsupported contentType: {body.get('contentType')}")
        delimiter = body.get("columnDelimiter", "COMMA")
        if delimiter not in DELIMITERS:
            raise _job_error("INVALIDJOB", f"Invalid columnDelimiter: {delimiter}")
        line_ending = body.get("lineEnding", "LF")
        if line_ending not in LINE_ENDINGS:
            raise _job_error("INVALIDJOB", f"Invalid lineEnding: {line_ending}")

        job = QueryJob(
            id=self._ids.next(JOB_PREFIX),
            org_id=ctx.org_id,
            user_id=ctx.user_id,
            operation=operation,
            query=soql,
            object_name="",
            column_delimiter=delimiter,
            line_ending=line_ending,
            api_version=ctx.api_version,
            created=self._now(),
            outcome="JobComplete",
        )
        try:
            execution = self._service.execute(ctx, soql, query_all=operation == "queryAll")
            job.object_name = execution.plan.obj.name
            self._snapshot(job, execution)
        except SalesforceError as exc:
            job.outcome = "Failed"
            job.error_message = f"{exc.error_code}: {exc.message.strip()}"
        with self._lock:
            self._purge()
            self._jobs[job.id] = job
        return self._info(job, state="UploadComplete", brief=True)

    @staticmethod
    def _snapshot(job: QueryJob, execution: Execution) -> None:
        plan = execution.plan
        if plan.mode != "records":
            msg = "Aggregate queries are not supported by Bulk API 2.0 query"
            raise _job_error("FeatureNotEnabled", msg)
        kinds = [c.kind for c in plan.columns]
        if "compound" in kinds:
            name = plan.columns[kinds.index("compound")].name
            raise _job_error("FeatureNotEnabled", f"Selecting compound data not supported in Bulk Query: {name}")
        job.header = plan.column_names
        job.rows = [
            [csv_cell(kind, value) for kind, value in zip(kinds, flat_values(execution, row), strict=True)]
            for row in execution.rows
        ]

    def info(self, ctx: CallContext, job_id: str) -> dict[str, Any]:
        return self._info(self._get(ctx, job_id), state=None, brief=False)

    def list_jobs(self, ctx: CallContext) -> dict[str, Any]:
        with self._lock:
            self._purge()
            jobs = [j for j in self._jobs.values() if j.org_id == ctx.org_id]
        return {"done": True, "records": [self._info(j, state=None, brief=True) for j in jobs], "nextRecordsUrl": None}

    def abort(self, ctx: CallContext, job_id: str, body: Any) -> dict[str, Any]:
        """``PATCH`` with ``{"state": "Aborted"}``: the only change a query job accepts."""
        job = self._get(ctx, job_id)
        if not isinstance(body, dict) or body.get("state") != "Aborted":
            raise _job_error("INVALIDJOBSTATE", "A query job can only be changed to the Aborted state")
        with self._lock:
            state = self._state(job)
            if state in TERMINAL_STATES:
                raise _job_error("INVALIDJOBSTATE", f"Aborting a job in state {state} is not allowed")
            job.aborted_at = self._now()
            job.rows = []
        return self._info(job, state=None, brief=True)

    def delete(self, ctx: CallContext, job_id: str) -> None:
        job = self._get(ctx, job_id)
        with self._lock:
            self._jobs.pop(job.id, None)

    def results(self, ctx: CallContext, job_id: str, *, max_records: int | None, locator: str | None) -> ResultsPage:
        """One page of CSV (header row included) from ``locator`` (or the start)."""
        job = self._get(ctx, job_id)
        state = self._state(job)
        if state != "JobComplete":
            raise _job_error("INVALIDJOBSTATE", f"Results are available only once the job is JobComplete: {state}")
        if max_records is not None and max_records <= 0:
            raise _job_error("INVALIDJOB", "maxRecords must be a positive integer")
        offset = 0
        if locator and locator != "null":
            decoded = decode_locator(locator)
            if decoded is None or decoded > len(job.rows):
                raise _job_error("INVALIDLOCATOR", f"Invalid locator: {locator}")
            offset = decoded
        size = max_records or DEFAULT_MAX_RECORDS
        page = job.rows[offset : offset + size]
        out = io.StringIO()
        writer = csv.writer(
            out,
            delimiter=DELIMITERS[job.column_delimiter],
            lineterminator=LINE_ENDINGS[job.line_ending],
            quoting=csv.QUOTE_ALL,
        )
        writer.writerow(job.header)
        writer.writerows(page)
        end = offset + len(page)
        return ResultsPage(out.getvalue(), encode_locator(end) if end < len(job.rows) else "null", len(page))

    # -- internals -----------------------------------------------------------------------------

    def _get(self, ctx: CallContext, job_id: str) -> QueryJob:
        with self._lock:
            self._purge()
            job = self._jobs.get(job_id)
        if job is None or job.org_id != ctx.org_id:
            raise not_found()
        return job

    def _state(self, job: QueryJob) -> str:
        if job.aborted_at is not None:
            return "Aborted"
        if self._now() < job.created + self._processing:
            return "InProgress"
        return job.outcome

    def _finished_at(self, job: QueryJob) -> datetime:
        return job.aborted_at or job.created + self._processing

    def _purge(self) -> None:
        cutoff = self._now() - RETENTION
        for key in [
            k for k, j in self._jobs.items() if self._state(j) in TERMINAL_STATES and self._finished_at(j) < cutoff
        ]:
            del self._jobs[key]

    def _info(self, job: QueryJob, *, state: str | None, brief: bool) -> dict[str, Any]:
        current = state or self._state(job)
        finished = current in TERMINAL_STATES
        info: dict[str, Any] = {
            "id": job.id,
            "operation": job.operation,
            "object": job.object_name,
            "createdById": job.user_id,
            "createdDate": rest_datetime(job.created),
            "systemModstamp": rest_datetime(self._finished_at(job) if finished else job.created),
            "state": current,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(job.api_version),
            "jobType": "V2Query",
            "lineEnding": job.line_ending,
            "columnDelimiter": job.column_delimiter,
        }
        if not brief:
            info["numberRecordsProcessed"] = len(job.rows) if current == "JobComplete" else 0
            info["retries"] = 0
            info["totalProcessingTime"] = int(self._processing.total_seconds() * 1000) if finished else 0
            info["isPkChunkingSupported"] = True
        if current == "Failed" and job.error_message:
            info["errorMessage"] = job.error_message
        return info


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None


def build_bulk_query_router(
    source: RecordSource,
    schema_for: SchemaFor,
    call_context: Callable[..., CallContext],
    *,
    jobs: BulkQueryJobs | None = None,
    clock: Callable[[], float] | None = None,
) -> APIRouter:
    """The ``/services/data/vXX.X/jobs/query`` resources; ``clock`` (epoch seconds) stamps the jobs."""
    if jobs is None:
        tick = clock or time.time
        jobs = BulkQueryJobs(
            QueryService.with_clock(source, schema_for, tick), now=lambda: datetime.fromtimestamp(tick(), UTC)
        )
    registry = jobs
    router = APIRouter()
    base = "/services/data/v{version}/jobs/query"
    Ctx = Annotated[CallContext, Depends(call_context)]  # noqa: N806

    def versioned(ctx: CallContext, version: str) -> CallContext:
        check_version(version)
        check_resource(version, "GET", ["jobs", "query"])
        return CallContext(ctx.org_id, ctx.user_id, version, "bulkapi", ctx.client)

    @router.post(base)
    async def create_job(version: str, request: Request, ctx: Ctx) -> JSONResponse:
        call = versioned(ctx, version)
        body = await _json_body(request)
        # Creating a job runs its query; keep that CPU work off the event loop.
        return JSONResponse(await run_in_threadpool(registry.create, call, body))

    @router.get(base)
    def list_jobs(version: str, ctx: Ctx) -> JSONResponse:
        return JSONResponse(registry.list_jobs(versioned(ctx, version)))

    @router.get(base + "/{job_id}")
    def get_job(version: str, job_id: str, ctx: Ctx) -> JSONResponse:
        return JSONResponse(registry.info(versioned(ctx, version), job_id))

    @router.patch(base + "/{job_id}")
    async def patch_job(version: str, job_id: str, request: Request, ctx: Ctx) -> JSONResponse:
        call = versioned(ctx, version)
        return JSONResponse(registry.abort(call, job_id, await _json_body(request)))

    @router.delete(base + "/{job_id}")
    def delete_job(version: str, job_id: str, ctx: Ctx) -> Response:
        registry.delete(versioned(ctx, version), job_id)
        return Response(status_code=204)

    @router.get(base + "/{job_id}/results")
    def job_results(
        version: str,
        job_id: str,
        ctx: Ctx,
        max_records: Annotated[str | None, Query(alias="maxRecords")] = None,
        locator: Annotated[str | None, Query()] = None,
    ) -> Response:
        call = versioned(ctx, version)
        if max_records is not None and not max_records.isdigit():
            raise _job_error("INVALIDJOB", "maxRecords must be a positive integer")
        limit = int(max_records) if max_records is not None else None
        page = registry.results(call, job_id, max_records=limit, locator=locator)
        return Response(
            content=page.csv_text,
            media_type="text/csv; charset=UTF-8",
            headers={"Sforce-Locator": page.locator, "Sforce-NumberOfRecords": str(page.count)},
        )

    return router

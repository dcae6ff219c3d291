"""Bulk API 2.0 ingest jobs: ``/services/data/vXX.X/jobs/ingest``.

Lifecycle: ``Open`` → (CSV upload) → ``UploadComplete`` → ``InProgress`` → ``JobComplete`` | ``Failed``,
or ``Aborted`` at any point before completion. Processing runs on a background thread in chunks
(10,000 records by default, as Salesforce's internal batches); each chunk is one store transaction
whose change origin names the ``bulkapi`` API, and a failing record fails only itself.
Jobs live in memory: they are working state, not org data, and Salesforce drops them after 7 days anyway.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response

from services.salesforce_emulator import ids
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found
from services.salesforce_emulator.rest import Reply, json_body, render
from services.salesforce_emulator.store import RecordStore, Transaction
from services.salesforce_emulator.validation import format_datetime
from services.salesforce_emulator.versions import check_resource, check_version

Operation = Literal["insert", "update", "upsert", "delete", "hardDelete"]
OPERATIONS: tuple[str, ...] = ("insert", "update", "upsert", "delete", "hardDelete")
DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
TERMINAL = frozenset({"JobComplete", "Failed", "Aborted"})
DEFAULT_CHUNK = 10_000


def _job_error(message: str, code: str = "INVALIDJOB") -> SalesforceError:
    return SalesforceError(400, code, message)


def _state_error(message: str) -> SalesforceError:
    return SalesforceError(400, "INVALIDJOBSTATE", message)


@dataclass
class IngestJob:
    """One ingest job and its results."""

    id: str
    org_id: str
    ctx: CallContext
    object: str
    operation: str
    external_id_field: str | None
    column_delimiter: str
    line_ending: str
    created_ms: int
    modstamp_ms: int
    state: str = "Open"
    data: bytes | None = None
    header: list[str] = field(default_factory=list)
    processed: int = 0
    failed: int = 0
    processing_ms: int = 0
    error_message: str | None = None
    successes: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    abort: threading.Event = field(default_factory=threading.Event)

    def info(self, *, full: bool) -> dict[str, Any]:
        """JobInfo as Salesforce returns it (``full`` adds the progress counters of ``GET``)."""
        body: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": self.ctx.user_id,
            "createdDate": format_datetime(self.created_ms),
            "systemModstamp": format_datetime(self.modstamp_ms),
            "state": self.state,
        }
        if self.external_id_field:
            body["externalIdFieldName"] = self.external_id_field
        body.update(
            {
                "concurrencyMode": "Parallel",
                "contentType": "CSV",
                "apiVersion": float(self.ctx.api_version),
                "contentUrl": f"services/data/v{self.ctx.api_version}/jobs/ingest/{self.id}/batches",
                "lineEnding": self.line_ending,
                "columnDelimiter": self.column_delimiter,
                "jobType": "V2Ingest",
            }
        )
        if full:
            body.update(
                {
                    "retries": 0,
                    "totalProcessingTime": self.processing_ms,
                    "apiActiveProcessingTime": self.processing_ms,
                    "apexProcessingTime": 0,
                    "numberRecordsProcessed": self.processed,
                    "numberRecordsFailed": self.failed,
                }
            )
            if self.error_message:
                body["errorMessage"] = self.error_message
        return body


def format_error(exc: SalesforceError) -> str:
    """``sf__Error`` text: ``STATUS_CODE:message:field1,field2 --``."""
    return f"{exc.error_code}:{exc.message}:{','.join(exc.fields)} --"


class BulkIngest:
    """Ingest jobs of every org over one record store."""

    def __init__(
        self,
        store: RecordStore,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._chunk = chunk_size
        self._clock = clock
        self._jobs: dict[str, IngestJob] = {}
        self._lock = threading.Lock()
        self._ids = ids.IdFactory("5g")
        self._threads: list[threading.Thread] = []

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def job(self, ctx: CallContext, job_id: str) -> IngestJob:
        with self._lock:
            job = self._jobs.get(ids.to18(job_id) if ids.is_valid(job_id) else job_id)
        if job is None or job.org_id != ctx.org_id:
            raise not_found()
        return job

    # --- API operations -------------------------------------------------------------------------

    def create(self, ctx: CallContext, body: Any) -> IngestJob:
        if not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise _job_error(f"InvalidJob : Invalid operation: {operation}")
        name = body.get("object")
        obj = self._store.object_def(ctx.org_id, str(name)) if name else None
        if obj is None:
            raise _job_error(f"InvalidJob : Unable to find object: {name}")
        content_type = body.get("contentType", "CSV")
        if content_type != "CSV":
            raise _job_error(f"InvalidJob : Unsupported content type: {content_type}")
        delimiter = body.get("columnDelimiter", "COMMA")
        if delimiter not in DELIMITERS:
            raise _job_error(f"InvalidJob : Invalid column delimiter: {delimiter}")
        line_ending = body.get("lineEnding", "LF")
        if line_ending not in LINE_ENDINGS:
            raise _job_error(f"InvalidJob : Invalid line ending: {line_ending}")
        ext = body.get("externalIdFieldName")
        if operation == "upsert":
            if not ext:
                raise _job_error("InvalidJob : External ID was blank for upsert")
            f = obj.field(str(ext))
            if f is None or not (f.external_id or f.name == "Id"):
                raise _job_error(
                    f"InvalidJob : Field name provided, {ext} does not match an External ID, "
                    f"Salesforce Id, or indexed field for {obj.name}"
                )
            ext = f.name
        else:
            ext = None
        now = self._now()
        job = IngestJob(
            id=self._ids.next("750"),
            org_id=ctx.org_id,
            ctx=replace(ctx, api_name="bulkapi"),
            object=obj.name,
            operation=str(operation),
            external_id_field=ext,
            column_delimiter=delimiter,
            line_ending=line_ending,
            created_ms=now,
            modstamp_ms=now,
        )
        with self._lock:
            self._jobs[job.id] = job
        return job

    def upload(self, ctx: CallContext, job_id: str, data: bytes) -> None:
        job = self.job(ctx, job_id)
        if job.state != "Open":
            raise _state_error(f"Unable to upload data: the job is in state {job.state}, not Open")
        if job.data is not None:
            raise _state_error("Unable to upload data: a job accepts one upload; create another job for more data")
        if not data.strip():
            raise SalesforceError(400, "INVALIDBATCH", "InvalidBatch : The CSV upload is empty")
        job.data = data
        job.modstamp_ms = self._now()

    def set_state(self, ctx: CallContext, job_id: str, body: Any) -> dict[str, Any]:
        """Close or abort a job; returns the JobInfo as of the transition (processing may move on at once)."""
        job = self.job(ctx, job_id)
        state = body.get("state") if isinstance(body, dict) else None
        if state == "UploadComplete":
            if job.state != "Open":
                raise _state_error(f"Unable to close the job: it is in state {job.state}, not Open")
            job.state = "UploadComplete"
            job.modstamp_ms = self._now()
            info = job.info(full=False)
            thread = threading.Thread(target=self._process, args=(job,), name=f"bulk-ingest-{job.id}", daemon=True)
            self._threads.append(thread)
            thread.start()
            return info
        if state == "Aborted":
            if job.state in TERMINAL:
                raise _state_error(f"Unable to abort the job: it is already in state {job.state}")
            job.abort.set()
            job.state = "Aborted"
            job.modstamp_ms = self._now()
            return job.info(full=False)
        raise _state_error(f"Invalid state for an ingest job: {state}")

    def delete(self, ctx: CallContext, job_id: str) -> None:
        job = self.job(ctx, job_id)
        if job.state not in ("UploadComplete", *TERMINAL):
            raise _state_error(f"Unable to delete the job: it is in state {job.state}")
        with self._lock:
            self._jobs.pop(job.id, None)

    def list_jobs(self, ctx: CallContext) -> dict[str, Any]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.org_id == ctx.org_id]
        return {"done": True, "records": [j.info(full=False) for j in jobs], "nextRecordsUrl": None}

    def results(self, ctx: CallContext, job_id: str, kind: str) -> str:
        job = self.job(ctx, job_id)
        delimiter = DELIMITERS[job.column_delimiter]
        out = io.StringIO()
        writer = csv.writer(
            out, delimiter=delimiter, lineterminator=LINE_ENDINGS[job.line_ending], quoting=csv.QUOTE_ALL
        )
        if kind == "successfulResults":
            writer.writerow(["sf__Id", "sf__Created", *job.header])
            for record_id, created, row in list(job.successes):
                writer.writerow([record_id, "true" if created else "false", *row])
        elif kind == "failedResults":
            writer.writerow(["sf__Id", "sf__Error", *job.header])
            for record_id, error, row in list(job.failures):
                writer.writerow([record_id, error, *row])
        else:
            writer.writerow(job.header)
            for row in list(job.unprocessed):
                writer.writerow(row)
        return out.getvalue() if job.header else ""

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Join finished processing threads (tests and shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout)

    # --- processing -----------------------------------------------------------------------------

    def _rows(self, job: IngestJob) -> tuple[list[str], list[list[str]]]:
        assert job.data is not None
        text = job.data.decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[job.column_delimiter])
        rows = [r for r in reader if r and any(cell != "" for cell in r)]
        if not rows:
            return [], []
        return rows[0], rows[1:]

    def _process(self, job: IngestJob) -> None:
        started = time.monotonic()
        try:
            if job.abort.is_set():
                return
            if job.data is None:
                self._fail(job, "InvalidBatch : No data was uploaded for this job")
                return
            try:
                header, rows = self._rows(job)
            except (UnicodeDecodeError, csv.Error) as exc:
                self._fail(job, f"InvalidBatch : Failed to parse the CSV: {exc}")
                return
            job.header = header
            problem = self._check_header(job, header)
            if problem:
                job.unprocessed = rows
                self._fail(job, problem)
                return
            if job.abort.is_set():
                job.unprocessed = rows
                return
            job.state = "InProgress"
            job.modstamp_ms = self._now()
            for start in range(0, len(rows), self._chunk):
                if job.abort.is_set():
                    job.unprocessed.extend(rows[start:])
                    return
                self._chunk_txn(job, header, rows[start : start + self._chunk])
            if not job.abort.is_set():
                job.state = "JobComplete"
        except Exception as exc:
            self._fail(job, f"InternalServerError : {exc}")
        finally:
            job.processing_ms = int((time.monotonic() - started) * 1000)
            job.modstamp_ms = self._now()

    def _fail(self, job: IngestJob, message: str) -> None:
        if job.abort.is_set():
            return
        job.state = "Failed"
        job.error_message = message

    def _check_header(self, job: IngestJob, header: list[str]) -> str | None:
        obj = self._store.object_def(job.org_id, job.object)
        if obj is None:
            return f"InvalidBatch : Unable to find object: {job.object}"
        lowered = [h.lower() for h in header]
        if job.operation in ("delete", "hardDelete"):
            if lowered != ["id"]:
                return "InvalidBatch : The 'delete' batch must contain only ids"
            return None
        for name in header:
            if name.lower() != "id" and obj.field(name) is None:
                return f"InvalidBatch : Field name not found : {name}"
        if job.operation == "update" and "id" not in lowered:
            return "InvalidBatch : The 'update' batch must contain an Id column"
        if job.operation == "upsert" and (job.external_id_field or "").lower() not in lowered:
            return f"InvalidBatch : The 'upsert' batch must contain the external id column {job.external_id_field}"
        return None

    def _chunk_txn(self, job: IngestJob, header: list[str], rows: list[list[str]]) -> None:
        with self._store.transaction(job.ctx) as txn:
            for row in rows:
                body = dict(zip(header, row, strict=False))
                try:
                    record_id, created = self._apply(txn, job, body)
                except SalesforceError as exc:
                    job.failures.append((_row_id(body), format_error(exc), row))
                    job.failed += 1
                else:
                    job.successes.append((record_id, created, row))
                job.processed += 1

    def _apply(self, txn: Transaction, job: IngestJob, body: dict[str, str]) -> tuple[str, bool]:
        op = job.operation
        if op == "insert":
            if _row_id(body):
                raise SalesforceError(400, "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call")
            return txn.create(job.object, {k: v for k, v in body.items() if k.lower() != "id"}, "csv"), True
        if op in ("update", "delete", "hardDelete"):
            record_id = _row_id(body)
            if not record_id:
                raise SalesforceError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            if not ids.is_valid(record_id):
                raise SalesforceError(400, "MALFORMED_ID", f"invalid record id: {record_id}", ["Id"])
            try:
                if op == "update":
                    txn.update(job.object, record_id, {k: v for k, v in body.items() if k.lower() != "id"}, "csv")
                elif op == "delete":
                    txn.delete(record_id, job.object)
                else:
                    txn.hard_delete(record_id, job.object)
            except SalesforceError as exc:
                if exc.error_code == "NOT_FOUND":
                    raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id") from None
                raise
            return ids.to18(record_id), False
        ext = job.external_id_field or "Id"
        key = next((v for k, v in body.items() if k.lower() == ext.lower()), "")
        rest = {k: v for k, v in body.items() if k.lower() not in (ext.lower(), "id")}
        if ext == "Id":
            return txn.upsert(job.object, "Id", key or None, rest, "csv")
        if not key:
            raise SalesforceError(400, "MISSING_ARGUMENT", f"{ext} not specified", [ext])
        return txn.upsert(job.object, ext, key, rest, "csv")


def _row_id(body: dict[str, str]) -> str:
    return next((v for k, v in body.items() if k.lower() == "id"), "")


def build_bulk_ingest_router(
    store: RecordStore,
    call_context: Callable[..., Any],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    ingest: BulkIngest | None = None,
) -> APIRouter:
    """Routes for ``/services/data/vXX.X/jobs/ingest…`` (absolute paths; include without a prefix)."""
    service = ingest or BulkIngest(store, chunk_size=chunk_size)
    router = APIRouter()
    # A default, not an Annotated alias: postponed annotations cannot see this function's locals.
    ctx_dependency = Depends(call_context)
    base = "/services/data/v{version}/jobs/ingest"

    def versioned(request: Request, ctx: CallContext) -> CallContext:
        version = check_version(str(request.path_params.get("version", "")))
        check_resource(version, "GET", ["jobs", "ingest"])
        return replace(ctx, api_version=version)

    async def create(request: Request, ctx: CallContext = ctx_dependency) -> Response:
        call = versioned(request, ctx)
        job = service.create(call, json_body(await request.body()))
        return render(Reply(200, job.info(full=False)))

    async def list_jobs(request: Request, ctx: CallContext = ctx_dependency) -> Response:
        return render(Reply(200, service.list_jobs(versioned(request, ctx))))

    async def get_job(request: Request, job_id: str, ctx: CallContext = ctx_dependency) -> Response:
        return render(Reply(200, service.job(versioned(request, ctx), job_id).info(full=True)))

    async def patch_job(request: Request, job_id: str, ctx: CallContext = ctx_dependency) -> Response:
        call = versioned(request, ctx)
        return render(Reply(200, service.set_state(call, job_id, json_body(await request.body()))))

    async def delete_job(request: Request, job_id: str, ctx: CallContext = ctx_dependency) -> Response:
        service.delete(versioned(request, ctx), job_id)
        return Response(status_code=204)

    async def upload(request: Request, job_id: str, ctx: CallContext = ctx_dependency) -> Response:
        service.upload(versioned(request, ctx), job_id, await request.body())
        return Response(status_code=201)

    def results_route(kind: str) -> Callable[..., Any]:
        async def results(request: Request, job_id: str, ctx: CallContext = ctx_dependency) -> Response:
            text = service.results(versioned(request, ctx), job_id, kind)
            return Response(text, media_type="text/csv")

        return results

    for path in (base, base + "/"):
        router.add_api_route(path, create, methods=["POST"])
        router.add_api_route(path, list_jobs, methods=["GET"])
    for path in (base + "/{job_id}", base + "/{job_id}/"):
        router.add_api_route(path, get_job, methods=["GET"])
        router.add_api_route(path, patch_job, methods=["PATCH"])
        router.add_api_route(path, delete_job, methods=["DELETE"])
    for path in (base + "/{job_id}/batches", base + "/{job_id}/batches/"):
        router.add_api_route(path, upload, methods=["PUT"])
    # Salesforce documents ``unprocessedrecords``; simple-salesforce asks for ``unprocessedRecords``.
    # Answer both so that client works unchanged.
    spellings = {"unprocessedRecords": "unprocessedrecords"}
    for segment in ("successfulResults", "failedResults", "unprocessedrecords", *spellings):
        kind = spellings.get(segment, segment)
        for path in (f"{base}/{{job_id}}/{segment}", f"{base}/{{job_id}}/{segment}/"):
            router.add_api_route(path, results_route(kind), methods=["GET"])
    return router

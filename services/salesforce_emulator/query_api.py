"""REST ``query`` and ``queryAll``: SOQL over HTTP with Salesforce's paging.

The first call runs the whole query and keeps the rendered records behind a query locator
(``01g…``); ``nextRecordsUrl`` pages are slices of that snapshot, so paging is stable while writes
continue and costs O(page) per call. ``run_query``/``run_query_url`` give Composite the same
behaviour without an HTTP round trip, sharing one :class:`QueryService` (and so one set of cursors)
with the router.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures, whose
# Annotated aliases are local to build_query_router.
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse

from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.soql_engine import (
    Execution,
    RecordSource,
    RestRenderer,
    SchemaFor,
    compile_query,
    execute,
)
from services.salesforce_emulator.soql_parser import parse
from services.salesforce_emulator.versions import check_version

DEFAULT_BATCH_SIZE = 2000
MIN_BATCH_SIZE = 200
MAX_BATCH_SIZE = 2000
LOCATOR_PREFIX = "01g"


def invalid_locator() -> SalesforceError:
    return SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")


def batch_size_from_header(header: str | None) -> int | None:
    """``Sforce-Query-Options: batchSize=500`` → 500, clamped to 200..2000; None when absent or unreadable."""
    if not header:
        return None
    for part in header.replace(",", ";").split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "batchsize":
            try:
                size = int(value.strip())
            except ValueError:
                return None
            return max(MIN_BATCH_SIZE, min(MAX_BATCH_SIZE, size))
    return None


@dataclass
class _Cursor:
    org_id: str
    user_id: str
    records: list[dict[str, Any]]
    batch_size: int
    last_used: float


class QueryCursors:
    """Open query locators.

    As in Salesforce, a cursor closes once its last page has been served, after ``idle_seconds``
    without use (15 minutes), or when its user opens more than ``max_per_user`` (the oldest goes).
    """

    def __init__(
        self,
        *,
        ids: IdFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_seconds: float = 900.0,
        max_per_user: int = 10,
    ) -> None:
        self._ids = ids if ids is not None else IdFactory()
        self._clock = clock
        self._idle = idle_seconds
        self._max_per_user = max_per_user
        self._open: OrderedDict[str, _Cursor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._open)

    def open(self, ctx: CallContext, records: list[dict[str, Any]], batch_size: int) -> str:
        """Keep ``records`` behind a new locator id (18 characters, ``01g`` prefix)."""
        locator = self._ids.next(LOCATOR_PREFIX)
        with self._lock:
            self._expire()
            self._open[locator] = _Cursor(ctx.org_id, ctx.user_id, records, batch_size, self._clock())
            mine = [k for k, c in self._open.items() if c.org_id == ctx.org_id and c.user_id == ctx.user_id]
            for stale in mine[: max(0, len(mine) - self._max_per_user)]:
                del self._open[stale]
        return locator

    def take(self, ctx: CallContext, locator: str, offset: int, batch_size: int | None) -> tuple[list[Any], int, bool]:
        """The page at ``offset``: (records, total, done). Closes the cursor after its last page."""
        with self._lock:
            self._expire()
            cursor = self._open.get(locator)
            if cursor is None or cursor.org_id != ctx.org_id or not 0 <= offset < len(cursor.records):
                raise invalid_locator()
            size = batch_size or cursor.batch_size
            page = cursor.records[offset : offset + size]
            done = offset + size >= len(cursor.records)
            if done:
                del self._open[locator]
            else:
                cursor.last_used = self._clock()
                self._open.move_to_end(locator)
            return page, len(cursor.records), done

    def _expire(self) -> None:
        deadline = self._clock() - self._idle
        for key in [k for k, c in self._open.items() if c.last_used < deadline]:
            del self._open[key]


class QueryService:
    """SOQL for one emulator: parses, checks against the org's schema, runs, pages."""

    def __init__(
        self,
        source: RecordSource,
        schema_for: SchemaFor,
        *,
        cursors: QueryCursors | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source = source
        self.schema_for = schema_for
        self.cursors = cursors if cursors is not None else QueryCursors()
        self._now = now

    @classmethod
    def with_clock(cls, source: RecordSource, schema_for: SchemaFor, clock: Callable[[], float]) -> "QueryService":
        """A service whose date literals and cursor expiry follow ``clock`` (epoch seconds)."""
        return cls(
            source,
            schema_for,
            cursors=QueryCursors(clock=clock),
            now=lambda: datetime.fromtimestamp(clock(), UTC),
        )

    def execute(self, ctx: CallContext, soql: str, *, query_all: bool = False) -> Execution:
        """Run ``soql`` for ``ctx``'s org; raises the SalesforceError Salesforce would."""
        query = parse(soql)
        plan = compile_query(soql, query, self.schema_for(ctx.org_id), now=self._now())
        return execute(plan, self.source, ctx.org_id, include_deleted=query_all)

    def query(
        self, ctx: CallContext, soql: str, *, query_all: bool = False, batch_size: int | None = None
    ) -> dict[str, Any]:
        """The first page of a ``query``/``queryAll`` response body."""
        execution = self.execute(ctx, soql, query_all=query_all)
        if execution.plan.mode == "count":
            return {"totalSize": execution.count, "done": True, "records": []}
        renderer = RestRenderer(execution, ctx.api_version)
        records = [renderer.record(row) for row in execution.rows]
        size = batch_size or DEFAULT_BATCH_SIZE
        if len(records) <= size:
            return {"totalSize": len(records), "done": True, "records": records}
        locator = self.cursors.open(ctx, records, size)
        return self._body(ctx, records[:size], len(records), locator, size, query_all=query_all)

    def query_more(
        self, ctx: CallContext, locator: str, *, query_all: bool = False, batch_size: int | None = None
    ) -> dict[str, Any]:
        """A later page: ``locator`` is ``01g…-2000`` as found at the end of ``nextRecordsUrl``."""
        cursor_id, sep, offset_text = locator.rpartition("-")
        if not sep or not offset_text.isdigit():
            raise invalid_locator()
        offset = int(offset_text)
        page, total, done = self.cursors.take(ctx, cursor_id, offset, batch_size)
        if done:
            return {"totalSize": total, "done": True, "records": page}
        return self._body(ctx, page, total, cursor_id, offset + len(page), query_all=query_all)

    @staticmethod
    def _body(
        ctx: CallContext, page: list[Any], total: int, cursor_id: str, next_offset: int, *, query_all: bool
    ) -> dict[str, Any]:
        resource = "queryAll" if query_all else "query"
        return {
            "totalSize": total,
            "done": False,
            "nextRecordsUrl": f"/services/data/v{ctx.api_version}/{resource}/{cursor_id}-{next_offset}",
            "records": page,
        }


def run_query(
    service: QueryService,
    ctx: CallContext,
    soql: str,
    *,
    query_all: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """A ``query``/``queryAll`` response body, for Composite subrequests."""
    return service.query(ctx, soql, query_all=query_all, batch_size=batch_size)


def run_query_url(
    service: QueryService, ctx: CallContext, url: str, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Serve a Composite subrequest URL: ``/services/data/vXX.X/query/?q=…`` or ``…/queryAll/01g…-2000``.

    Raises ``NOT_FOUND`` for URLs that are not query resources.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 4 or segments[:2] != ["services", "data"] or not segments[2].startswith("v"):
        raise not_found()
    version, resource, rest = check_version(segments[2][1:]), segments[3], segments[4:]
    if resource not in ("query", "queryAll") or len(rest) > 1:
        raise not_found()
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    batch_size = batch_size_from_header(lowered.get("sforce-query-options"))
    call = replace(ctx, api_version=version)
    query_all = resource == "queryAll"
    if rest:
        return service.query_more(call, rest[0], query_all=query_all, batch_size=batch_size)
    q = parse_qs(parts.query).get("q")
    if not q:
        raise _missing_query()
    return service.query(call, q[0], query_all=query_all, batch_size=batch_size)


def _missing_query() -> SalesforceError:
    return SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")


def build_query_router(
    source: RecordSource,
    schema_for: SchemaFor,
    call_context: Callable[..., CallContext],
    *,
    service: QueryService | None = None,
    clock: Callable[[], float] | None = None,
) -> APIRouter:
    """``GET /services/data/vXX.X/{query,queryAll}/?q=`` and ``…/{query,queryAll}/{locator}-{offset}``.

    Pass ``service`` to share cursors with Composite (``run_query``); otherwise one is made here,
    driven by ``clock`` (epoch seconds) for TODAY-style literals and cursor expiry.
    """
    svc = service if service is not None else QueryService.with_clock(source, schema_for, clock or time.time)
    router = APIRouter()
    Ctx = Annotated[CallContext, Depends(call_context)]  # noqa: N806
    Options = Annotated[str | None, Header(alias="Sforce-Query-Options")]  # noqa: N806
    Soql = Annotated[str | None, Query()]  # noqa: N806

    def versioned(ctx: CallContext, version: str) -> CallContext:
        return replace(ctx, api_version=check_version(version))

    # JSONResponse skips FastAPI's recursive jsonable_encoder: pages are already plain JSON values.
    def first_page(
        version: str, q: str | None, ctx: CallContext, options: str | None, *, query_all: bool
    ) -> JSONResponse:
        call = versioned(ctx, version)
        if not q:
            raise _missing_query()
        body = svc.query(call, q, query_all=query_all, batch_size=batch_size_from_header(options))
        return JSONResponse(body)

    def more(version: str, locator: str, ctx: CallContext, options: str | None, *, query_all: bool) -> JSONResponse:
        call = versioned(ctx, version)
        body = svc.query_more(call, locator, query_all=query_all, batch_size=batch_size_from_header(options))
        return JSONResponse(body)

    # Both spellings are registered: redirecting ``query`` to ``query/`` would cost clients a round trip.
    @router.get("/services/data/v{version}/query")
    @router.get("/services/data/v{version}/query/")
    def query(version: str, ctx: Ctx, options: Options = None, q: Soql = None) -> JSONResponse:
        return first_page(version, q, ctx, options, query_all=False)

    @router.get("/services/data/v{version}/queryAll")
    @router.get("/services/data/v{version}/queryAll/")
    def query_all(version: str, ctx: Ctx, options: Options = None, q: Soql = None) -> JSONResponse:
        return first_page(version, q, ctx, options, query_all=True)

    @router.get("/services/data/v{version}/query/{locator}")
    def query_next(version: str, locator: str, ctx: Ctx, options: Options = None) -> JSONResponse:
        return more(version, locator, ctx, options, query_all=False)

    @router.get("/services/data/v{version}/queryAll/{locator}")
    def query_all_next(version: str, locator: str, ctx: Ctx, options: Options = None) -> JSONResponse:
        return more(version, locator, ctx, options, query_all=True)

    return router

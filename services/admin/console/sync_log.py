"""The sync log searched a page at a time (and exported as CSV), one record's timeline with what was
decided for each of its fields, and a retry of a record whose write Salesforce rejected."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

import asyncio
import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.admin.console.tenants import signed_in
from services.admin.console.web import PREFIX, Api, ApiProblemError, Web, back, form_of, segment

STATUSES = ("succeeded", "rejected", "skipped", "conflict", "echo", "info")
PAGE_SIZES = ("25", "50", "100", "250")
DEFAULT_PAGE = "50"
# The API has no CSV: the export pages through its JSON, bounded so that one click cannot keep the
# server busy for minutes. The CLI (`duplex log --all --csv`) has no bound.
CSV_ROWS = 10_000
_API_PAGE = 1000
# As `duplex log --csv` writes them, so a spreadsheet made from either reads the other.
_CSV_COLUMNS = ("id", "at", "service", "event", "status", "link_id", "record_id", "code", "message", "detail")
_CSV_KEYS = {"link_id": "linkId", "record_id": "recordId"}
SIDES = {"app": "the app", "crm": "Salesforce"}


def utc(text: str) -> str | None:
    """A time from a form (a datetime-local control, which has no zone: the console's times are UTC)
    as the API takes it; what does not parse goes as it is, for the API to name the parameter."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return text
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def field_errors(problem: ApiProblemError) -> dict[str, str]:
    """The API's message for each parameter, by the form control's name (``query.status[0]`` is
    ``status``); a message about no parameter under ``""``."""
    found: dict[str, str] = {}
    for name, message in problem.field_errors().items():
        control = re.sub(r"\[\d+\].*$", "", name.removeprefix("query."))
        found.setdefault(control if control != "body" else "", message)
    if not found:
        found[""] = problem.detail
    return found


@dataclass(frozen=True)
class LogFilters:
    """The search form's values, as typed."""

    statuses: tuple[str, ...] = ()
    pair: str = ""
    record: str = ""
    event: str = ""
    since: str = ""
    until: str = ""
    limit: str = DEFAULT_PAGE

    @classmethod
    def of(cls, request: Request) -> "LogFilters":
        query = request.query_params
        return cls(
            statuses=tuple(query.getlist("status")),
            pair=query.get("pair", ""),
            record=query.get("record", "").strip(),
            event=query.get("event", "").strip(),
            since=query.get("since", ""),
            until=query.get("until", ""),
            limit=query.get("limit", DEFAULT_PAGE),
        )

    def api_params(self) -> dict[str, Any]:
        return {
            "status": list(self.statuses),
            "pair": self.pair,
            "record": self.record,
            "event": self.event,
            "since": utc(self.since),
            "until": utc(self.until),
        }

    def query(self, **more: str) -> str:
        """The filters as a page URL's query (the page size too), with ``more``."""
        pairs = [("status", s) for s in self.statuses]
        pairs += [(k, v) for k, v in self._singles().items() if v]
        pairs += [(k, v) for k, v in more.items() if v]
        return urlencode(pairs)

    def _singles(self) -> dict[str, str]:
        limit = "" if self.limit == DEFAULT_PAGE else self.limit
        return {
            "pair": self.pair,
            "record": self.record,
            "event": self.event,
            "since": self.since,
            "until": self.until,
            "limit": limit,
        }


def summary(entry: Mapping[str, Any]) -> str:
    """An entry's message, or for a resolved change what was decided for each field."""
    if entry.get("message"):
        return str(entry["message"])
    detail = entry.get("detail") or {}
    fields = detail.get("fields")
    if isinstance(fields, dict) and fields:
        decided = ", ".join(f"{name} {(d or {}).get('outcome', '?')}" for name, d in fields.items())
        side = SIDES.get(detail.get("side", ""), "?")
        return f"{detail.get('kind', 'change')} from {side}: {decided}"
    return ""


def _writes(writes: Any) -> list[str]:
    if not isinstance(writes, dict):
        return []
    said = []
    for side, write in sorted(writes.items()):
        if not isinstance(write, dict):
            continue
        how = write.get("operation") or write.get("kind") or "write"
        fields = ", ".join(write.get("fields") or []) or "no field"
        held = " — held: syncing that way is paused" if write.get("held") else ""
        said.append(f"To {SIDES.get(side, side)}: {how} of {fields}{held}")
    return said


def explained(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a timeline entry's detail says, in the page's words: each field's decision, a conflict's
    policy and winner, the writes that followed, Salesforce's errors. The sync log keeps no field
    values (only decisions), so there are none to show."""
    detail = entry.get("detail") or {}
    view: dict[str, Any] = {
        "raw": json.dumps(detail, indent=2, sort_keys=True, ensure_ascii=False, default=str) if detail else "",
    }
    fields = detail.get("fields")
    if isinstance(fields, dict):
        side = SIDES.get(detail.get("side", ""), "either side")
        view["change"] = f"Change from {side} ({detail.get('kind', 'of an unknown kind')})"
        view["fields"] = [
            {"name": name, "outcome": d.get("outcome", ""), "reason": d.get("reason", ""), "echo": d.get("echo")}
            for name, d in fields.items()
            if isinstance(d, dict)
        ]
        view["writes"] = _writes(detail.get("writes"))
        view["notes"] = [str(n) for n in detail.get("notes") or []]
        dropped = detail.get("dropped")
        view["dropped"] = sorted(dropped.items()) if isinstance(dropped, dict) else []
    if entry.get("event") == "conflict.decided":
        view["conflict"] = {
            "field": detail.get("field", ""),
            "policy": entry.get("code") or "",
            "winner": SIDES.get(detail.get("winner", ""), detail.get("winner", "")),
            "outcome": detail.get("outcome", ""),
        }
    errors = detail.get("errors")
    if isinstance(errors, list):
        view["errors"] = [e for e in errors if isinstance(e, dict)]
        view["rolled_back"] = [str(f) for f in detail.get("rolled_back") or []]
    return view


def _csv(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for entry in entries:
        row = [entry.get(_CSV_KEYS.get(c, c)) for c in _CSV_COLUMNS]
        row[-1] = json.dumps(entry.get("detail") or {})
        writer.writerow(row)
    return out.getvalue()


def _retried(answer: Mapping[str, Any]) -> str:
    said = []
    if answer["requested"]:
        pairs = ", ".join(r["objectPair"] for r in answer["records"])
        said.append(f"the app was asked to publish the record again ({pairs})")
    said += [f"not retried in {s['objectPair']}: {s['reason']}" for s in answer["skipped"]]
    return "; ".join(said)


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    async def search(api: Api, tenant: str, filters: LogFilters, cursor: str) -> tuple[Any, dict[str, str]]:
        """A page of entries, or the API's complaints about the filters (shown by the form)."""
        try:
            page = await api.get(
                f"/tenants/{segment(tenant)}/sync-log", **filters.api_params(), limit=filters.limit, cursor=cursor
            )
        except ApiProblemError as problem:
            if problem.status != 422:
                raise
            return None, field_errors(problem)
        return page, {}

    @pages.get("/tenants/{tenant}/sync-log")
    async def sync_log(request: Request, tenant: str) -> Response:
        api = await signed_in(web, request)
        filters = LogFilters.of(request)
        cursor = request.query_params.get("cursor", "")
        current, (page, errors) = await asyncio.gather(
            api.get(f"/tenants/{segment(tenant)}"), search(api, tenant, filters, cursor)
        )
        entries = [entry | {"summary": summary(entry)} for entry in (page or {}).get("entries", [])]
        return web.render(
            request,
            "sync_log.html",
            status_code=422 if errors else 200,
            tenant=tenant,
            filters=filters,
            pairs=[p["name"] for p in current["document"]["spec"].get("objects", [])],
            statuses=STATUSES,
            page_sizes=PAGE_SIZES,
            entries=entries,
            cursor=cursor,
            next_cursor=(page or {}).get("nextCursor"),
            errors=errors,
            csv_rows=CSV_ROWS,
        )

    @pages.get("/tenants/{tenant}/sync-log.csv")
    async def sync_log_csv(request: Request, tenant: str) -> Response:
        api = web.api(request)
        filters = LogFilters.of(request)
        entries: list[dict[str, Any]] = []
        cursor = None
        while len(entries) < CSV_ROWS:
            limit = min(_API_PAGE, CSV_ROWS - len(entries))
            page = await api.get(
                f"/tenants/{segment(tenant)}/sync-log", **filters.api_params(), limit=limit, cursor=cursor
            )
            entries += page["entries"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        name = re.sub(r"[^A-Za-z0-9._-]", "_", tenant)
        return Response(
            _csv(entries),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}-sync-log.csv"'},
        )

    async def timeline_page(
        request: Request, tenant: str, record: str, refused: ApiProblemError | None = None
    ) -> Response:
        api = await signed_in(web, request)
        found = await api.get(f"/tenants/{segment(tenant)}/records/{segment(record)}/timeline")
        entries = [entry | {"view": explained(entry)} for entry in found["entries"]]
        return web.render(
            request,
            "timeline.html",
            status_code=refused.status if refused else 200,
            tenant=tenant,
            record=record,
            links=found["links"],
            entries=entries,
            truncated=found["truncated"],
            # What a retry acts on: a write Salesforce rejected (the API tells whether it still is).
            can_retry=any(e["event"] == "write.rejected" for e in entries),
            refused=refused,
        )

    @pages.get("/tenants/{tenant}/records/{record:path}")
    async def timeline(request: Request, tenant: str, record: str) -> Response:
        return await timeline_page(request, tenant, record)

    @pages.post("/tenants/{tenant}/retries")
    async def retry(request: Request, tenant: str) -> Response:
        record = (await form_of(request)).get("record", "")
        try:
            answer = await web.api(request).post(f"/tenants/{segment(tenant)}/retries", {"record": record})
        except ApiProblemError as problem:
            # A refusal (nothing to retry, not allowed) is shown on the record's page, in context.
            if problem.status >= 500:
                raise
            return await timeline_page(request, tenant, record, problem)
        return back(f"/tenants/{segment(tenant)}/records/{segment(record)}", _retried(answer))

    return pages

"""``/api/v1/tenants/{tenant}/sync-log`` (search, a page at a time) and
``/api/v1/tenants/{tenant}/records/{record}/timeline`` (one record, oldest first)."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import datetime
from typing import Annotated, Any, Literal, cast, get_args

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, invalid_request
from services.admin.api.tenants import stored_config
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.sync_log_search import (
    STATUSES,
    CursorError,
    LogQuery,
    LogRow,
    Position,
    RecordLink,
    links_of,
    search,
    timeline,
)
from services.common.db import Connection

Status = Literal["succeeded", "rejected", "skipped", "conflict", "echo", "info"]
assert set(get_args(Status)) == set(STATUSES)
MAX_LIMIT = 1000


class SyncLogEntry(ApiModel):
    id: int
    at: datetime
    service: str = Field(description="The service that wrote the row.")
    event: str = Field(description="Such as `change.resolved`, `conflict.decided`, `write.rejected`.")
    status: Status = Field(description="What the row says about a record (`info`: news about the tenant).")
    link_id: str | None = Field(description="The record's identity across sides, when it has one.")
    record_id: str | None
    code: str | None = Field(description="Salesforce's error code, a conflict's policy, or Duplex's reason code.")
    message: str | None
    detail: dict[str, Any] = Field(description="What the row's service knew: decisions per field, errors, versions.")


class SyncLogPage(ApiModel):
    entries: list[SyncLogEntry] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Link(ApiModel):
    link_id: str
    pair: str
    app_record_id: str | None
    salesforce_id: str | None


class RecordTimeline(ApiModel):
    tenant: str
    record: str
    links: list[Link] = Field(description="The record's links: its ids on both sides, one per object pair.")
    entries: list[SyncLogEntry] = Field(description="Oldest first.")
    truncated: bool = Field(description="Older entries were left out (raise `limit`).")


def _entry(row: LogRow) -> SyncLogEntry:
    return SyncLogEntry(
        id=row.id,
        at=row.at,
        service=row.service,
        event=row.event,
        status=cast(Status, row.status),
        link_id=row.link_id,
        record_id=row.record_id,
        code=row.code,
        message=row.message,
        detail=dict(row.detail),
    )


def _link(link: RecordLink) -> Link:
    return Link(
        link_id=link.link_id, pair=link.pair, app_record_id=link.app_record_id, salesforce_id=link.salesforce_id
    )


def _invalid(parameter: str, message: str) -> ApiError:
    return invalid_request([{"loc": ("query", parameter), "msg": message}])


def sync_log_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["sync log"])
    read = access.require(Action.READ)

    @router.get("/{tenant}/sync-log", response_model=SyncLogPage, summary="Search the sync log, newest first")
    async def sync_log(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
        status: Annotated[list[Status] | None, Query(description="Any of these statuses.")] = None,
        event: Annotated[list[str] | None, Query(description="Any of these events.")] = None,
        code: Annotated[list[str] | None, Query(description="Any of these codes.")] = None,
        pair: Annotated[str | None, Query(description="Rows of this object pair's records and about it.")] = None,
        record: Annotated[
            str | None, Query(min_length=1, description="A record's app id, Salesforce id (15 or 18) or link id.")
        ] = None,
        since: Annotated[datetime | None, Query(description="From this time (inclusive).")] = None,
        until: Annotated[datetime | None, Query(description="Before this time.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page.")] = None,
    ) -> SyncLogPage:
        await stored_config(ConfigStore(db), tenant)
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise _invalid(name, "give a time zone, such as 2026-12-07T10:00:00Z")
        if since is not None and until is not None and since >= until:
            raise _invalid("until", "must be after since")
        try:
            after = Position.of_cursor(cursor) if cursor is not None else None
        except CursorError as exc:
            raise _invalid("cursor", str(exc)) from None
        query = LogQuery(
            statuses=frozenset(status or ()),
            events=frozenset(event or ()),
            codes=frozenset(code or ()),
            pair=pair,
            record=record,
            since=since,
            until=until,
        )
        rows, position = await search(db, tenant, query, limit=limit, after=after)
        return SyncLogPage(entries=[_entry(r) for r in rows], next_cursor=position.cursor() if position else None)

    @router.get(
        "/{tenant}/records/{record}/timeline",
        response_model=RecordTimeline,
        summary="One record's sync log, oldest first: why a field holds its value",
    )
    async def record_timeline(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        record: str,
        db: Annotated[Connection, Depends(access.connection)],
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 500,
    ) -> RecordTimeline:
        await stored_config(ConfigStore(db), tenant)
        links = await links_of(db, tenant, record)
        rows, truncated = await timeline(db, tenant, record, links, limit=limit)
        if not links and not rows:
            raise ApiError(404, detail=f"tenant '{tenant}' has no record '{record}' in its links or sync log")
        return RecordTimeline(
            tenant=tenant,
            record=record,
            links=[_link(link) for link in links],
            entries=[_entry(r) for r in rows],
            truncated=truncated,
        )

    return router

"""The REST calls cdc-ingest makes (describe, SOQL, Bulk 2.0 query jobs), over the shared client.

Every call goes through :class:`~services.common.salesforce.SalesforceClient`, so it is budgeted
(the rate-limit-governor seam), stamped with the tenant's call-options client and re-authenticated
on an expired session. Reads for backfills are marked ``backfill=True`` so that the governor can
give live work priority.
"""

from __future__ import annotations

import asyncio
import csv
import email.utils
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from services.cdc_ingest.describe import MASTER_RECORD_ID, is_mergeable
from services.cdc_ingest.typed import FieldInfo
from services.common.governor_client import BudgetUnavailable
from services.common.salesforce import SalesforceApiError, SalesforceClient
from services.common.schema import CrmObject

log = logging.getLogger(__name__)

BULK_DONE = "JobComplete"
BULK_FAILED = frozenset({"Failed", "Aborted"})


class BulkJobGoneError(LookupError):
    """The Bulk 2.0 job no longer exists (deleted, or older than Salesforce keeps jobs)."""


@dataclass(frozen=True)
class BulkPage:
    rows: list[dict[str, str]]
    # The locator of the page after this one; None when this was the last.
    next_locator: str | None


# Even a not_before already past waits this long, so a refusal is never retried in a tight loop.
LEAST_BUDGET_WAIT_SECONDS = 0.1


def seconds_until(not_before: datetime, now: datetime) -> float:
    """How long to wait for budget the governor expects at ``not_before``."""
    return max(LEAST_BUDGET_WAIT_SECONDS, (not_before - now).total_seconds())


T = TypeVar("T")


class BudgetEpisode:
    """A tenant's budget refusals as one part of cdc-ingest meets them: an episode begins with the
    first refusal and ends with the next call granted, and is logged once (a warning, no traceback:
    being out of budget is expected, and a line per event or retry would bury everything else)."""

    def __init__(
        self,
        tenant_id: str,
        what: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tenant_id = tenant_id
        self._what = what
        self._sleep = sleep
        self._clock = clock
        self.refused = False

    def note(self, refusal: BudgetUnavailable, **extra: Any) -> None:
        """A refusal: warned about if it begins an episode."""
        if not self.refused:
            log.warning(
                f"tenant out of API budget: {self._what}",
                extra={"tenant_id": self.tenant_id, "not_before": refusal.not_before.isoformat(), **extra},
            )
        self.refused = True

    def granted(self) -> None:
        """A call went through: the episode, if any, is over."""
        if self.refused:
            log.info(f"API budget back: {self._what}", extra={"tenant_id": self.tenant_id})
        self.refused = False

    async def wait(self, refusal: BudgetUnavailable, **extra: Any) -> None:
        """Note the refusal, then wait until the governor expects budget."""
        self.note(refusal, **extra)
        await self._sleep(seconds_until(refusal.not_before, self._clock()))

    async def until_granted(self, work: Callable[[], Awaitable[T]], **extra: Any) -> T:
        """``work()``'s result, waiting for budget (as long as the governor says) each time it is refused."""
        while True:
            try:
                result = await work()
            except BudgetUnavailable as refusal:
                await self.wait(refusal, **extra)
                continue
            self.granted()
            return result


# Called with (object, describe JSON) after every describe.
OnDescribe = Callable[[str, Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Counted:
    """A SELECT COUNT()'s answer, and Salesforce's clock when it answered (its ``Date`` header)."""

    records: int
    server_time: datetime | None


def _server_time(response: httpx.Response) -> datetime | None:
    try:
        return email.utils.parsedate_to_datetime(response.headers["Date"])
    except (KeyError, TypeError, ValueError):
        return None


class SalesforceRest:
    def __init__(self, client: SalesforceClient, *, on_describe: OnDescribe | None = None) -> None:
        self.client = client
        self._on_describe = on_describe
        self._describes: dict[str, dict[str, FieldInfo]] = {}
        self._mergeable: dict[str, bool] = {}

    async def org_id(self) -> str:
        """The org id (``tenantid`` for Pub/Sub), from the OpenID userinfo of the session."""
        response = await self.client.request("GET", "/services/oauth2/userinfo")
        return str(response.json()["organization_id"])

    async def fields(self, entity: str, *, refresh: bool = False) -> dict[str, FieldInfo]:
        """Describe's fields of ``entity`` by name, cached until ``refresh``."""
        if refresh or entity not in self._describes:
            response = await self.client.request("GET", f"{self.client.api_base}/sobjects/{entity}/describe")
            describe: dict[str, Any] = response.json()
            self._describes[entity] = {
                f["name"]: FieldInfo(
                    name=f["name"],
                    type=f["type"],
                    compound=f.get("compoundFieldName"),
                    calculated=bool(f.get("calculated")),
                )
                for f in describe["fields"]
            }
            self._mergeable[entity] = is_mergeable(describe)
            if self._on_describe is not None:
                await self._on_describe(entity, describe)
        return self._describes[entity]

    def knows(self, entity: str) -> bool:
        """Whether ``entity``'s describe is cached."""
        return entity in self._describes

    def adopt_stored(self, entity: str, stored: CrmObject) -> None:
        """Use the describe stored in PostgreSQL (``crm_schema_objects``) for ``entity`` until the
        next describe: a stand-in while the tenant has no budget to describe it again. (It keeps no
        compoundFieldName, which nothing here reads.)"""
        self._describes[entity] = {
            f.name: FieldInfo(name=f.name, type=f.type, calculated=f.calculated) for f in stored.fields
        }
        # The stored form drops describe's flag; the field is what a merge writes (see is_mergeable).
        self._mergeable[entity] = any(f.name == MASTER_RECORD_ID for f in stored.fields)

    async def mergeable(self, entity: str) -> bool:
        """Whether describe says ``entity``'s records can be merged."""
        await self.fields(entity)
        return self._mergeable[entity]

    async def query(
        self, soql: str, *, all_rows: bool = False, backfill: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record of a SOQL query, following nextRecordsUrl (``all_rows``: queryAll)."""
        resource = "queryAll" if all_rows else "query"
        response = await self.client.request(
            "GET", f"{self.client.api_base}/{resource}", params={"q": soql}, backfill=backfill
        )
        async for record in self._records(response, backfill=backfill):
            yield record

    async def tooling_query(self, soql: str) -> AsyncIterator[dict[str, Any]]:
        """Every record of a Tooling API SOQL query (``/tooling/query/``), following nextRecordsUrl.

        A Tooling call is an API request like any other: it is budgeted and counted the same way.
        """
        response = await self.client.request("GET", f"{self.client.api_base}/tooling/query/", params={"q": soql})
        async for record in self._records(response, backfill=False):
            yield record

    async def _records(self, response: httpx.Response, *, backfill: bool) -> AsyncIterator[dict[str, Any]]:
        while True:
            body = response.json()
            for record in body["records"]:
                yield record
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not next_url:
                return
            response = await self.client.request("GET", next_url, backfill=backfill)

    async def count(self, entity: str, where: str | None = None) -> Counted:
        soql = f"SELECT COUNT() FROM {entity}" + (f" WHERE {where}" if where else "")
        response = await self.client.request("GET", f"{self.client.api_base}/query", params={"q": soql}, backfill=True)
        return Counted(int(response.json()["totalSize"]), _server_time(response))

    # --- Bulk 2.0 query jobs ---------------------------------------------------------------------

    async def create_query_job(self, soql: str) -> str:
        response = await self.client.request(
            "POST",
            f"{self.client.api_base}/jobs/query",
            json={
                "operation": "query",
                "query": soql,
                "contentType": "CSV",
                "columnDelimiter": "COMMA",
                "lineEnding": "LF",
            },
            backfill=True,
        )
        return str(response.json()["id"])

    async def wait_for_job(self, job_id: str, poll_seconds: float) -> None:
        """Return once the job is complete; raise if it failed or is gone."""
        while True:
            try:
                response = await self.client.request(
                    "GET", f"{self.client.api_base}/jobs/query/{job_id}", backfill=True
                )
            except SalesforceApiError as error:
                if error.http_status == 404:
                    raise BulkJobGoneError(job_id) from error
                raise
            info: Mapping[str, Any] = response.json()
            state = info.get("state")
            if state == BULK_DONE:
                return
            if state in BULK_FAILED:
                raise SalesforceApiError(500, f"BULK_JOB_{str(state).upper()}", str(info.get("errorMessage", "")))
            await asyncio.sleep(poll_seconds)

    async def job_page(self, job_id: str, locator: str | None, max_records: int) -> BulkPage:
        params = {"maxRecords": str(max_records)}
        if locator:
            params["locator"] = locator
        try:
            response = await self.client.request(
                "GET", f"{self.client.api_base}/jobs/query/{job_id}/results", params=params, backfill=True
            )
        except SalesforceApiError as error:
            if error.http_status == 404:
                raise BulkJobGoneError(job_id) from error
            raise
        rows = list(csv.DictReader(io.StringIO(response.text)))
        next_locator = response.headers.get("Sforce-Locator")
        return BulkPage(rows, None if not next_locator or next_locator == "null" else next_locator)

"""A tenant's dead letters: listed with their reasons and decoded payloads, and replayed to the topic
they came from or discarded with a reason, those ticked or every pending one of a topic at once."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.admin.console.sync_log import field_errors, utc
from services.admin.console.tenants import signed_in
from services.admin.console.web import PREFIX, ApiProblemError, Web, form_of, segment

TOPICS = ("app_changes", "crm_changes", "mapped_changes", "crm_writes", "write_outcomes")
STATES = ("pending", "replayed", "discarded")
PAGE_SIZES = ("50", "100", "250", "1000")
DEFAULT_PAGE = "100"
# What the API calls the body's fields, as the page labels the controls that sent them.
LABELS = {"ids": "Selected entries", "reason": "Reason for discarding"}
# Past this many, the answer shown after an action counts the ids rather than naming them all
# (it travels in the redirect's URL).
_NAMED = 10


@dataclass(frozen=True)
class LetterFilters:
    """The listing's filters, as typed."""

    state: str = ""
    topic: str = ""
    record: str = ""
    since: str = ""
    limit: str = DEFAULT_PAGE

    @classmethod
    def of(cls, values: Mapping[str, str]) -> "LetterFilters":
        return cls(
            state=values.get("state", ""),
            topic=values.get("topic", ""),
            record=values.get("record", "").strip(),
            since=values.get("since", ""),
            limit=values.get("limit", "") or DEFAULT_PAGE,
        )

    @classmethod
    def of_view(cls, view: str) -> "LetterFilters":
        """The filters of the listing a form was posted from (its query, sent back as ``view``)."""
        return cls.of(dict(parse_qsl(view)))

    def api_params(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "topic": self.topic,
            "record": self.record,
            "since": utc(self.since),
            "limit": self.limit,
        }

    def query(self, **more: str) -> str:
        limit = "" if self.limit == DEFAULT_PAGE else self.limit
        given = {"state": self.state, "topic": self.topic, "record": self.record, "since": self.since, "limit": limit}
        return urlencode([(k, v) for k, v in (given | more).items() if v])


def _payload(entry: Mapping[str, Any]) -> str | None:
    payload = entry.get("payload")
    return None if payload is None else json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)


def _named(ids: Sequence[str]) -> str:
    return ", ".join(ids) if len(ids) <= _NAMED else f"{', '.join(ids[:_NAMED])} and {len(ids) - _NAMED} more"


def acted(action: str, answer: Mapping[str, Any]) -> str:
    """The API's answer to a replay or discard, as the page says it."""
    verb = "replayed" if action == "replay" else "discarded"
    done, already = answer["done"], answer["already"]
    said = [f"{verb} {len(done)}: {_named(done)}" if done else f"nothing was {verb}"]
    if already:
        said.append(f"{len(already)} {verb} before, left as they were: {_named(already)}")
    return "; ".join(said)


def refusal(problem: ApiProblemError) -> list[str]:
    """What the API refused, each invalid field under the label of the control that sent it."""
    if not problem.errors:
        return [problem.detail]
    said = []
    for name, message in problem.field_errors().items():
        control = name.split("[", 1)[0]
        said.append(f"{LABELS.get(control, control)}: {message}")
    return said


async def _ticked(request: Request) -> list[str]:
    return [str(i) for i in (await request.form()).getlist("id")]


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    async def listing(
        request: Request,
        tenant: str,
        filters: LetterFilters,
        refused: ApiProblemError | None = None,
        chosen: Sequence[str] = (),
        reason: str = "",
    ) -> Response:
        api = await signed_in(web, request)
        errors: dict[str, str] = {}
        try:
            listed = await api.get(f"/tenants/{segment(tenant)}/dead-letters", **filters.api_params())
        except ApiProblemError as problem:
            if problem.status != 422:
                raise
            listed, errors = {"entries": [], "total": 0}, field_errors(problem)
        entries = [entry | {"payloadText": _payload(entry)} for entry in listed["entries"]]
        return web.render(
            request,
            "dead_letters.html",
            status_code=refused.status if refused else 422 if errors else 200,
            tenant=tenant,
            filters=filters,
            topics=TOPICS,
            states=STATES,
            page_sizes=PAGE_SIZES,
            entries=entries,
            total=listed["total"],
            pending_topics=sorted({e["topic"] for e in entries if e["state"] == "pending"}),
            errors=errors,
            refused=refusal(refused) if refused else None,
            reason_invalid=bool(refused and "reason" in refused.field_errors()),
            chosen=set(chosen),
            reason=reason,
        )

    async def act(request: Request, tenant: str, action: str, body: dict[str, Any], reason: str = "") -> Response:
        form = await request.form()
        filters = LetterFilters.of_view(str(form.get("view", "")))
        try:
            answer = await web.api(request).post(f"/tenants/{segment(tenant)}/dead-letters:{action}", body)
        except ApiProblemError as problem:
            # Refused (not allowed, invalid, a discarded entry to replay): nothing was done, and the
            # listing shows why with the ticked entries still ticked.
            if problem.status >= 500:
                raise
            return await listing(request, tenant, filters, problem, await _ticked(request), reason)
        query = filters.query(done=acted(action, answer))
        return RedirectResponse(f"{PREFIX}/tenants/{segment(tenant)}/dead-letters?{query}", status_code=303)

    @pages.get("/tenants/{tenant}/dead-letters")
    async def dead_letters(request: Request, tenant: str) -> Response:
        return await listing(request, tenant, LetterFilters.of(request.query_params))

    @pages.post("/tenants/{tenant}/dead-letters/replay")
    async def replay(request: Request, tenant: str) -> Response:
        form = await form_of(request)
        if form.get("all"):
            every = {"topic": form.get("topic"), "record": form.get("record"), "since": utc(form.get("since", ""))}
            body: dict[str, Any] = {"all": True} | {k: v for k, v in every.items() if v}
        else:
            body = {"ids": await _ticked(request)}
        return await act(request, tenant, "replay", body)

    @pages.post("/tenants/{tenant}/dead-letters/discard")
    async def discard(request: Request, tenant: str) -> Response:
        form = await form_of(request)
        reason = form.get("reason", "").strip()
        return await act(request, tenant, "discard", {"ids": await _ticked(request), "reason": reason}, reason)

    return pages

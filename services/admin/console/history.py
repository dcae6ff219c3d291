"""A tenant's configuration history: every version, what changed between two of them, the current
document, and restoring an old version (stored as a new one, after a page that shows what it changes)."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

import asyncio
import json
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.admin.console.tenants import signed_in
from services.admin.console.web import PREFIX, Api, ApiProblemError, Web, back, form_of, segment

# A collection whose one-line YAML is at most this long is shown on one line; a longer one, indented.
ONE_LINE = 60


def readable(value: Any) -> str:
    """A value of a document as the diff shows it: a scalar as JSON (so the text "5000" and the number
    5000 look different, and null is visible), a mapping or list as YAML."""
    if not isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    flow: str = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**6)
    if len(flow.strip()) <= ONE_LINE:
        return flow.strip()
    return as_yaml(value).rstrip()


def as_yaml(document: Any) -> str:
    """In the order the API gives (the order of the document), as ``duplex config show`` prints it."""
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return text


async def _diff(api: Api, tenant: str, from_version: object, to_version: object) -> Any:
    # As typed in the address: the API validates the numbers and says what is wrong with them.
    return await api.call("GET", f"/tenants/{segment(tenant)}/diff", params={"from": from_version, "to": to_version})


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    @pages.get("/tenants/{tenant}/history")
    async def history(request: Request, tenant: str) -> Response:
        api = await signed_in(web, request)
        t = segment(tenant)
        versions, current = await asyncio.gather(api.get(f"/tenants/{t}/versions"), api.get(f"/tenants/{t}"))
        return web.render(
            request,
            "history.html",
            tenant=tenant,
            versions=list(reversed(versions["items"])),
            current=current,
            document=as_yaml(current["document"]),
        )

    @pages.get("/tenants/{tenant}/diff")
    async def diff(request: Request, tenant: str) -> Response:
        api = await signed_in(web, request)
        found = await _diff(api, tenant, request.query_params.get("from"), request.query_params.get("to"))
        return web.render(request, "diff.html", tenant=tenant, diff=found, readable=readable, restore=None)

    @pages.get("/tenants/{tenant}/versions/{version}/restore")
    async def confirm_restore(request: Request, tenant: str, version: int) -> Response:
        api = await signed_in(web, request)
        current = await api.get(f"/tenants/{segment(tenant)}")
        # What restoring does: from the current document to the old one.
        found = await _diff(api, tenant, current["version"], version)
        return web.render(request, "diff.html", tenant=tenant, diff=found, readable=readable, restore=version)

    @pages.post("/tenants/{tenant}/versions/{version}/restore")
    async def restore(request: Request, tenant: str, version: int) -> Response:
        form = await form_of(request)
        # Signed in first: a refusal's page then shows who is refused.
        api = await signed_in(web, request)
        if form.get("confirm") != "yes":
            # The box is required on the page; this is for a form sent without it.
            raise ApiProblemError(
                400, f"restoring needs a confirmation: tick the box under the changes version {version} makes"
            )
        applied = await api.post(f"/tenants/{segment(tenant)}/versions/{version}:restore")
        done = (
            f"restored version {version} as version {applied['version']}"
            if applied["changed"]
            else f"version {version} is the same as the current version {applied['version']}: nothing changed"
        )
        return back(f"/tenants/{segment(tenant)}/history", done)

    return pages

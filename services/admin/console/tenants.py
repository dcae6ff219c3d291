"""The tenants' cards, one tenant's page (health, pairs, jobs, pauses) and one job's page, with the
run-control forms: run a poll, backfill or reconcile now, pause and resume."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.admin.console.web import PREFIX, Api, Web, back, form_of, segment
from services.common.jobs import KINDS

DIRECTIONS = {"both": "both ways", "to_crm": "to Salesforce", "to_app": "to the app"}


async def signed_in(web: Web, request: Request) -> Api:
    """The user's API, with who they are kept for the page's header."""
    api = web.api(request)
    request.state.me = await api.get("/me")
    return api


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    @pages.get("/tenants")
    async def tenants(request: Request) -> Response:
        api = await signed_in(web, request)
        # One call: the API computes every card together, and a tenant whose configuration it cannot
        # read is a card saying so rather than a failed page.
        overview = await api.get("/overview")
        return web.render(request, "tenants.html", cards=overview["tenants"])

    @pages.get("/tenants/{tenant}")
    async def tenant(request: Request, tenant: str) -> Response:
        api = await signed_in(web, request)
        t = segment(tenant)
        health, connection, current, jobs, pauses, throughput = await asyncio.gather(
            api.get(f"/tenants/{t}/health"),
            api.get(f"/tenants/{t}/connection"),
            api.get(f"/tenants/{t}"),
            api.get(f"/tenants/{t}/jobs", limit=10),
            api.get(f"/tenants/{t}/pauses"),
            api.get(f"/tenants/{t}/throughput"),
        )
        pairs = current["document"]["spec"].get("objects", [])
        return web.render(
            request,
            "tenant.html",
            tenant=tenant,
            health=health,
            connection=connection,
            version=current,
            pairs=pairs,
            jobs=jobs["jobs"],
            pauses=pauses,
            throughput=throughput,
            kinds=KINDS,
            directions=DIRECTIONS,
        )

    @pages.post("/tenants/{tenant}/jobs")
    async def run_job(request: Request, tenant: str) -> Response:
        form = await form_of(request)
        api = web.api(request)
        job = await api.post(
            f"/tenants/{segment(tenant)}/jobs", {"kind": form.get("kind"), "objectPair": form.get("objectPair")}
        )
        return back(
            f"/tenants/{segment(tenant)}/jobs/{job['id']}", f"{job['kind']} of {job['objectPair']}: {job['status']}"
        )

    @pages.get("/tenants/{tenant}/jobs/{job_id}")
    async def job(request: Request, tenant: str, job_id: int) -> Response:
        api = await signed_in(web, request)
        found = await api.get(f"/tenants/{segment(tenant)}/jobs/{job_id}")
        return web.render(request, "job.html", tenant=tenant, job=found)

    @pages.post("/tenants/{tenant}/pause")
    async def pause(request: Request, tenant: str) -> Response:
        return await _pause_or_resume(request, tenant, "pause")

    @pages.post("/tenants/{tenant}/resume")
    async def resume(request: Request, tenant: str) -> Response:
        return await _pause_or_resume(request, tenant, "resume")

    async def _pause_or_resume(request: Request, tenant: str, action: str) -> Response:
        form = await form_of(request)
        body: dict[str, Any] = {"direction": form.get("direction", "both")}
        if form.get("objectPair"):
            body["objectPair"] = form["objectPair"]
        if action == "pause" and form.get("reason"):
            body["reason"] = form["reason"]
        await web.api(request).post(f"/tenants/{segment(tenant)}/{action}", body)
        what = body.get("objectPair", "every pair")
        done = f"{'paused' if action == 'pause' else 'resumed'} {what}, {DIRECTIONS.get(body['direction'], '')}"
        return back(f"/tenants/{segment(tenant)}", done)

    return pages

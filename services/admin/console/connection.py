"""A tenant's Salesforce connection: its state; connecting (or reconnecting) through this browser,
for a tenant of auth mode ``oauth_pkce``; revoking; and the preflight check of what the sync needs
from the org.

Connecting sends the browser to the authorize URL the API hands out; Salesforce sends it back to the
API's callback, whose page links back here. The console never sees the code or the tokens.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.admin.console.tenants import signed_in
from services.admin.console.web import PREFIX, Api, ApiProblemError, Web, back, form_of, segment

BROWSER_MODE = "oauth_pkce"
# What each status means for a tenant connected through a browser, and what to do (docs/admin-api.md).
MEANINGS = {
    "not_connected": "It was never connected: connect it.",
    "connected": "The tokens work.",
    "needs_reconnect": "Salesforce refused the refresh token (revoked in the org, expired by its policy, or the"
    " user deactivated): connect it again. Until then nothing is synced with the org; changes wait.",
    "error": "A token refresh failed (see the last error, e.g. a changed client secret): fix the cause; the next"
    " refresh clears it.",
    "revoked": "It was revoked through Duplex: connect it again to use it. Changes wait until then.",
}
# The modes services sign in with by themselves: nobody connects them, and a revoke lasts until the
# configuration changes.
SERVER_SIDE_MEANINGS = {
    **MEANINGS,
    "not_connected": "No service has signed in to the org for it yet.",
    "revoked": "It was revoked through Duplex: services do not sign in to the org again until a new version of"
    " the tenant's configuration is applied (a changed key or user, or a restored version).",
}


def meaning(connection: dict[str, Any]) -> str:
    meanings = MEANINGS if connection["authMode"] == BROWSER_MODE else SERVER_SIDE_MEANINGS
    return meanings.get(str(connection["status"]), "")


def router(web: Web) -> APIRouter:
    pages = APIRouter(prefix=PREFIX)

    async def page(request: Request, api: Api, tenant: str, check: Any = None) -> Response:
        connection = await api.get(f"/tenants/{segment(tenant)}/connection")
        return web.render(
            request,
            "connection.html",
            tenant=tenant,
            connection=connection,
            meaning=meaning(connection),
            browser_mode=BROWSER_MODE,
            check=check,
        )

    @pages.get("/tenants/{tenant}/connection")
    async def connection(request: Request, tenant: str) -> Response:
        return await page(request, await signed_in(web, request), tenant)

    @pages.post("/tenants/{tenant}/connection/connect")
    async def connect(request: Request, tenant: str) -> Response:
        await form_of(request)
        # Signed in first (as everywhere below): a refusal's page then shows who is refused.
        api = await signed_in(web, request)
        started = await api.post(f"/tenants/{segment(tenant)}/connection:authorize")
        # The URL is the API's, built on the tenant's login host as the deployment's policy allows.
        return RedirectResponse(started["authorizeUrl"], status_code=303)

    @pages.post("/tenants/{tenant}/connection/revoke")
    async def revoke(request: Request, tenant: str) -> Response:
        form = await form_of(request)
        api = await signed_in(web, request)
        if form.get("confirm") != "yes":
            # The box is required on the page; this is for a form sent without it.
            raise ApiProblemError(400, "revoking needs a confirmation: tick the box above the Revoke button")
        revoked = await api.post(f"/tenants/{segment(tenant)}/connection:revoke")
        return back(
            f"/tenants/{segment(tenant)}/connection",
            f"revoked the Salesforce connection of {tenant}: it is {revoked['status'].replace('_', ' ')}",
        )

    @pages.post("/tenants/{tenant}/connection/check")
    async def check(request: Request, tenant: str) -> Response:
        # Answered with the page itself, not a redirect: the outcome is this request's, stored nowhere
        # but the audit log, and sending the form again only checks again.
        await form_of(request)
        api = await signed_in(web, request)
        result = await api.post(f"/tenants/{segment(tenant)}/connection:check")
        return await page(request, api, tenant, check=result)

    return pages

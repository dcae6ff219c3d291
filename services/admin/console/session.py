"""Signing in and out of the console: a credential the admin API accepts (an API token, or an OIDC
access token when the server verifies them), checked with ``GET /api/v1/me`` before it is kept."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.admin.console.web import (
    COOKIE,
    PREFIX,
    ApiProblemError,
    SignInRequired,
    Web,
    back,
    form_of,
    same_origin,
    set_session,
)

# Far longer than an API token or an access token a provider issues; a bound on what is sent on.
MAX_CREDENTIAL = 8192


def _next(target: str | None) -> str:
    """Where to go after signing in: a console page only (never another site)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target.removeprefix(PREFIX)
    return "/tenants"


def session_router(web: Web) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("/sign-in")
    async def sign_in_page(request: Request) -> Response:
        return web.render(
            request,
            "sign_in.html",
            next=request.query_params.get("next", ""),
            reason=request.query_params.get("reason"),
        )

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        credential = str(form.get("credential", "")).strip()
        asked = str(form.get("next", ""))
        error = None
        if not same_origin(request):
            error = "the form was not sent from this console's page; open the sign-in page and try again"
        elif not credential:
            error = "enter an API token (dpx_...) or an OpenID Connect access token"
        elif not (credential.isascii() and credential.isprintable()) or len(credential) > MAX_CREDENTIAL:
            # A paste that picked up a typographic quote or a non-breaking space: no token looks so.
            error = "that credential is invalid, expired or revoked"
        else:
            try:
                await web.anonymous_api(credential).get("/me")
            except SignInRequired:
                error = "that credential is invalid, expired or revoked"
            except ApiProblemError as problem:
                error = problem.detail
        if error is not None:
            return web.render(request, "sign_in.html", status_code=401, next=asked, error=error)
        response = back(_next(asked))
        set_session(response, request, credential)
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        await form_of(request)  # another site may not sign the user out either
        response = back("/sign-in", "signed out")
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    return router

"""Signing in and out of the console: a credential the admin API accepts (an API token, or an OIDC
access token when the server verifies them), checked with ``GET /api/v1/me`` before it is kept.

With single sign-on configured (:mod:`services.admin.console.sso`), the access token comes from the
identity provider's redirect flow instead of a paste, and is checked and kept the same way."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.admin.console.sso import CALLBACK, FLOW_COOKIE, FLOW_PATH, FLOW_SECONDS, START, SingleSignOn, SsoError
from services.admin.console.web import (
    COOKIE,
    PREFIX,
    ApiProblemError,
    SignInRequired,
    Web,
    back,
    form_of,
    is_secure,
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


async def _refused(web: Web, credential: str) -> str | None:
    """Why the API would not accept ``credential``; None when it does."""
    try:
        await web.anonymous_api(credential).get("/me")
    except SignInRequired:
        return "invalid"
    except ApiProblemError as problem:
        return problem.detail
    return None


def session_router(web: Web, sso: SingleSignOn | None = None) -> APIRouter:
    """Signing in and out; with ``sso``, through the identity provider as well as with a token."""
    router = APIRouter(prefix=PREFIX)

    def page(request: Request, status_code: int = 200, **context: Any) -> Response:
        return web.render(request, "sign_in.html", status_code=status_code, sso=sso is not None, **context)

    @router.get("/sign-in")
    async def sign_in_page(request: Request) -> Response:
        return page(request, next=request.query_params.get("next", ""), reason=request.query_params.get("reason"))

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
            refused = await _refused(web, credential)
            error = "that credential is invalid, expired or revoked" if refused == "invalid" else refused
        if error is not None:
            return page(request, status_code=401, next=asked, error=error)
        response = back(_next(asked))
        set_session(response, request, credential)
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        await form_of(request)  # another site may not sign the user out either
        response = back("/sign-in", "signed out")
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    if sso is None:
        return router

    @router.get(START)
    async def sso_start(request: Request) -> Response:
        # A GET that only leaves for the provider: another site starting it gains nothing, since the
        # user still signs in as themselves and the flow ends in their own browser.
        asked = request.query_params.get("next", "")
        try:
            target, flow = await sso.begin(_next(asked))
        except SsoError as exc:
            return page(request, status_code=exc.status, next=asked, error=exc.message)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            FLOW_COOKIE,
            flow,
            max_age=FLOW_SECONDS,
            path=FLOW_PATH,
            httponly=True,
            # The provider's redirect back is a cross-site navigation: Lax lets this cookie come along.
            samesite="lax",
            secure=is_secure(request),
        )
        return response

    @router.get(CALLBACK)
    async def sso_callback(request: Request) -> Response:
        params = dict(request.query_params)
        try:
            signed_in = await sso.finish(request.cookies.get(FLOW_COOKIE), params)
            token = signed_in.access_token
            if not token.isascii() or not token.isprintable() or len(token) > MAX_CREDENTIAL:
                raise SsoError("the identity provider's access token is not one Duplex can use")
            refused = await _refused(web, token)
            if refused == "invalid":
                raise SsoError(
                    "you signed in with the identity provider, but Duplex does not accept its access token "
                    "(for another audience, expired, or granting no Duplex role); ask an administrator"
                )
            if refused is not None:
                raise SsoError(refused)
        except SsoError as exc:
            response = page(request, status_code=exc.status, error=exc.message)
        else:
            # A page, not a redirect: this request is the end of a navigation another site began, and
            # the browser would not send the SameSite=Strict session cookie along a redirect from it.
            response = web.render(request, "sign_in_continue.html", target=f"{PREFIX}{signed_in.next}", me=None)
            set_session(response, request, token)
        response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH, httponly=True, samesite="lax", secure=is_secure(request))
        return response

    return router

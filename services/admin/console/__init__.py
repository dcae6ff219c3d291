"""The Duplex console: web pages over the admin API, served by the admin service under ``/console``.

Server-rendered HTML (Jinja2) with a little progressive enhancement, every asset inside the package
(no CDN, no Node build), so it works on an air-gapped cluster. Each page calls the admin API as the
signed-in user (:mod:`services.admin.console.web`), so the console can see and do exactly what that
user's credential can over the API. Pages are grouped by what people do: tenants and their health,
jobs and pauses (:mod:`~services.admin.console.tenants`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.admin.console import connection, dead_letters, history, mappings, sync_log, tenants
from services.admin.console.session import session_router
from services.admin.console.sso import SingleSignOn
from services.admin.console.web import PREFIX, STATIC, ApiProblemError, SignInRequired, Web, sign_in_redirect


def install_console(app: FastAPI, public_url: str | None = None, sso: SingleSignOn | None = None) -> None:
    """Serve the console from ``app``, over ``app``'s own API; ``public_url`` is where browsers reach
    it (``DUPLEX_ADMIN_PUBLIC_URL``: behind a proxy that ends TLS, this server sees http); ``sso``
    signs users in through the identity provider (DUPLEX_ADMIN_OIDC_CLIENT_ID)."""
    web = Web(app, public_url)
    app.state.console_public_origin = web.public_origin
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(session_router(web, sso), include_in_schema=False)
    app.include_router(tenants.router(web), include_in_schema=False)
    app.include_router(mappings.router(web), include_in_schema=False)
    app.include_router(sync_log.router(web), include_in_schema=False)
    app.include_router(dead_letters.router(web), include_in_schema=False)
    app.include_router(history.router(web), include_in_schema=False)
    app.include_router(connection.router(web), include_in_schema=False)

    async def sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return sign_in_redirect(request, exc.reason)

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblemError)
        return web.problem_page(request, exc)

    app.add_exception_handler(SignInRequired, sign_in)
    app.add_exception_handler(ApiProblemError, problem)

    @app.get(PREFIX, include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse(f"{PREFIX}/tenants", status_code=303)

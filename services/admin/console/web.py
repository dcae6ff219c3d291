"""What every console page shares: the session cookie, the calls to the admin API on the signed-in
user's behalf, rendering, and the answers to the API's problems.

The console holds no authority of its own. A page calls the admin API in-process (an ASGI transport
to the same app) with the user's credential as its bearer token, so every page sees and may do
exactly what that credential may over the API, with the same validation and the same audit trail;
anything done here can be done with ``curl`` too. A page offers only the buttons the user's role may
use (:func:`abilities`), but that is a courtesy: a form sent anyway is still the API's to refuse.

The credential lives in an HttpOnly, SameSite=Strict cookie scoped to the console's path (Secure
over HTTPS), so no other site can make the browser send it, and a form that changes anything is
also refused unless its Origin (or Referer) is this server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp

from services.admin.auth import Action, Role, role_may
from services.admin.console import charts

PREFIX = "/console"
COOKIE = "duplex_console"
HERE = Path(__file__).parent
STATIC = HERE / "static"
_API = "/api/v1"


def segment(value: str) -> str:
    """A value as one path segment of an API URL."""
    return quote(value, safe="")


@dataclass
class ApiProblemError(Exception):
    """A problem document the API answered (status >= 400)."""

    status: int
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.detail

    def field_errors(self) -> dict[str, str]:
        """Each field's message, by the field's name (the API's camelCase)."""
        return {e.get("field", ""): e.get("message", "") for e in self.errors}


class SignInRequired(Exception):  # noqa: N818 (a redirect, not an error)
    """The page needs a signed-in user: send the browser to the sign-in page."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "")
        self.reason = reason


class Api:
    """The admin API as one signed-in user calls it."""

    def __init__(self, client: httpx.AsyncClient, credential: str) -> None:
        self._client = client
        self._headers = {"authorization": f"Bearer {credential}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = dict(self._headers)
        if content_type is not None:
            headers["content-type"] = content_type
        query = {k: v for k, v in (params or {}).items() if v not in (None, "", [])}
        try:
            response = await self._client.request(
                method, f"{_API}{path}", params=query, json=json, content=content, headers=headers
            )
        except UnicodeError:
            # Only a credential can carry what an HTTP header cannot (values go in the URL, encoded).
            raise SignInRequired("that credential holds characters no token has; sign in again") from None
        if response.status_code == 401:
            raise SignInRequired("your session has ended (the credential is no longer valid); sign in again")
        if response.status_code >= 400:
            body = _problem_body(response)
            raise ApiProblemError(
                response.status_code,
                str(body.get("detail") or body.get("title") or "failed"),
                list(body.get("errors") or []),
            )
        return response.json() if response.content else None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, json: Any = None) -> Any:
        return await self.call("POST", path, json=json if json is not None else {})


def _problem_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": f"HTTP {response.status_code}"}
    return body if isinstance(body, dict) else {"detail": str(body)}


def abilities(me: object) -> dict[str, bool]:
    """What the signed-in user's role may do, for a page to offer only that: ``me`` is the API's
    ``GET /me`` (None before signing in). Only what is offered: the API decides, and refuses the rest.

    ``can_operate``: run control (run a job, pause and resume, retry a record, replay or discard dead
    letters, check the connection, plan, validate a filter). ``can_configure``: changing the
    configuration (save a draft, restore a version, connect, reconnect or revoke the connection)."""
    role = None
    if isinstance(me, Mapping):
        try:
            role = Role(str(me.get("role")))
        except ValueError:
            role = None
    return {
        "can_operate": role is not None and role_may(role, Action.OPERATE),
        "can_configure": role is not None and role_may(role, Action.CONFIGURE),
    }


class Web:
    """Templates, the in-process API client, and the session."""

    def __init__(self, api_app: ASGIApp, public_url: str | None = None) -> None:
        parts = urlsplit(public_url) if public_url else None
        # Behind a proxy that ends TLS the request arrives as http: the browser's origin is the public one.
        self.public_origin = f"{parts.scheme}://{parts.netloc}" if parts else None
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals.update(prefix=PREFIX, charts=charts, segment=segment)
        self.templates.env.filters["when"] = charts.when
        self.templates.env.filters["number"] = charts.number
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://console.internal")

    def api(self, request: Request) -> Api:
        credential = request.cookies.get(COOKIE)
        if not credential:
            raise SignInRequired()
        return Api(self._client, credential)

    def anonymous_api(self, credential: str) -> Api:
        return Api(self._client, credential)

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        me = context.setdefault("me", getattr(request.state, "me", None))
        for name, allowed in abilities(me).items():
            context.setdefault(name, allowed)
        context.setdefault("flash", request.query_params.get("done"))
        return self.templates.TemplateResponse(request, template, context, status_code=status_code)

    def problem_page(self, request: Request, problem: ApiProblemError) -> HTMLResponse:
        return self.render(request, "problem.html", status_code=problem.status, problem=problem)


def _origins(request: Request) -> set[str]:
    """This server's origins: the one the request reached, and the public one (behind a proxy)."""
    public: str | None = getattr(request.app.state, "console_public_origin", None)
    return {f"{request.url.scheme}://{request.url.netloc}", *([public] if public else [])}


def same_origin(request: Request) -> bool:
    """Whether a state-changing form was posted from this server's own pages."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" in _origins(request)


async def form_of(request: Request) -> dict[str, str]:
    """A state-changing form's fields, refused (403) unless it was posted from this console's pages."""
    if not same_origin(request):
        raise ApiProblemError(403, "the form was not sent from this console's page; reload the page and try again")
    return {k: str(v) for k, v in (await request.form()).items()}


def back(path: str, done: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to a console page, with what was done shown there once."""
    target = f"{PREFIX}{path}" + (f"?done={quote(done)}" if done else "")
    return RedirectResponse(target, status_code=303)


def sign_in_redirect(request: Request, reason: str | None) -> Response:
    target = f"{PREFIX}/sign-in?next={quote(request.url.path)}" + (f"&reason={quote(reason)}" if reason else "")
    response = RedirectResponse(target, status_code=303)
    if reason:
        response.delete_cookie(COOKIE, path=PREFIX)
    return response


def is_secure(request: Request) -> bool:
    """Whether the console's cookies must be Secure: it is reached (or published) over HTTPS."""
    return any(origin.startswith("https://") for origin in _origins(request))


def set_session(response: Response, request: Request, credential: str) -> None:
    response.set_cookie(COOKIE, credential, path=PREFIX, httponly=True, samesite="strict", secure=is_secure(request))

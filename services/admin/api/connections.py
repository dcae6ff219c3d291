"""The Salesforce connection of a tenant: connect (through a browser), status, revoke; and the OAuth
callback Salesforce sends the browser back to.

The callback is the one route besides the health checks that takes no bearer token: a browser
coming back from Salesforce cannot carry one. The ``state`` it brings authenticates it instead
(see :mod:`services.admin.connect`), and the authorization table test lists it as such.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

import html
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse

from services.admin.api.access import Access
from services.admin.api.models import ConnectionAuthorization, SalesforceConnectionView
from services.admin.api.problems import ApiError, request_id_of
from services.admin.api.tenants import stored_config
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.connect import CALLBACK_PATH, ConnectError, ConnectFlow
from services.common.connections import SalesforceConnection, read_connection
from services.common.db import Connection
from services.common.tenant_config import AuthMode, SalesforceSpec

_PROBLEM_TYPES: dict[str, tuple[str, str | None]] = {
    ConnectError.INVALID_STATE: ("urn:duplex:problem:invalid-state", "Invalid or expired authorization"),
    ConnectError.AUTHORIZATION_FAILED: ("urn:duplex:problem:authorization-failed", "Salesforce authorization failed"),
    ConnectError.CANNOT_CONNECT: ("urn:duplex:problem:cannot-connect", "The tenant cannot be connected"),
}
# The callback's URL holds a code: keep it out of caches and of the Referer of anything linked.
_CALLBACK_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
# The page has no script, style or image: it may load nothing.
_PAGE_HEADERS = {**_CALLBACK_HEADERS, "Content-Security-Policy": "default-src 'none'"}


def _problem(exc: ConnectError, headers: dict[str, str] | None = None) -> ApiError:
    kind, title = _PROBLEM_TYPES.get(exc.kind, ("about:blank", None))
    return ApiError(exc.status, detail=str(exc), title=title, type=kind, headers=headers)


def _view(connection: SalesforceConnection, mode: AuthMode) -> SalesforceConnectionView:
    return SalesforceConnectionView(
        name=connection.tenant_id,
        auth_mode=mode.value,
        status=connection.status.value,
        org_id=connection.org_id,
        user_id=connection.user_id,
        username=connection.username,
        instance_url=connection.instance_url,
        scopes=list(connection.scopes),
        connected_at=connection.connected_at,
        connected_by=connection.connected_by,
        last_refresh_at=connection.last_refresh_at,
        last_error=connection.last_error,
    )


async def _salesforce_spec(db: Connection, tenant_id: str) -> SalesforceSpec:
    return (await stored_config(ConfigStore(db), tenant_id)).config.spec.salesforce


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _console_link(page: str) -> str:
    """A link from the callback's page to a console page, relative to the callback's URL so that it
    also works behind a public URL with a path prefix. It is a link, not a redirect: the callback's
    answer stays the same for every client, and with no-referrer the console never sees the code."""
    up = "../" * (CALLBACK_PATH.count("/") - 1)  # from the callback's folder up to the API's root
    return f'<p><a href="{html.escape(up + "console" + page)}">Back to the Duplex console</a></p>'


def _page(status: int, heading: str, text: str, console_page: str = "/tenants") -> HTMLResponse:
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(heading)} · Duplex</title></head>\n"
        f"<body><h1>{html.escape(heading)}</h1>\n<p>{html.escape(text)}</p>\n"
        f"{_console_link(console_page)}</body></html>\n"
    )
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)


def connections_router(access: Access, flow: ConnectFlow | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["connections"])
    read = access.require(Action.READ)
    configure = access.require(Action.CONFIGURE)
    db_dependency = Depends(access.connection)

    def connect_flow() -> ConnectFlow:
        if flow is None:
            raise ApiError(503, detail="connecting tenants needs the vault: set VAULT_KEYS for the admin API")
        return flow

    @router.get(
        "/tenants/{tenant}/connection",
        response_model=SalesforceConnectionView,
        summary="The tenant's Salesforce connection: status, org, user, scopes, last refresh and error",
    )
    async def show_connection(
        principal: Annotated[Principal, Depends(read)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> SalesforceConnectionView:
        spec = await _salesforce_spec(db, tenant)
        return _view(await read_connection(db, tenant), spec.auth.mode)

    @router.post(
        "/tenants/{tenant}/connection:authorize",
        response_model=ConnectionAuthorization,
        summary="Start connecting (or reconnecting) the tenant's org: an authorize URL for a browser",
        description="Only for auth mode oauth_pkce: a tenant of another mode signs in server-side (409).",
    )
    async def authorize(
        principal: Annotated[Principal, Depends(configure)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> ConnectionAuthorization:
        spec = await _salesforce_spec(db, tenant)
        try:
            started = await connect_flow().authorize(tenant, spec, principal.actor)
        except ConnectError as exc:
            raise _problem(exc) from None
        return ConnectionAuthorization(
            authorize_url=started.url, expires_at=started.expires_at, redirect_uri=started.redirect_uri
        )

    @router.post(
        "/tenants/{tenant}/connection:revoke",
        response_model=SalesforceConnectionView,
        summary="Revoke the tenant's grant at Salesforce and forget its tokens (nothing to revoke: 200 too)",
        description="A tenant of a server-side auth mode (password, client_credentials, jwt_bearer): its current"
        " access token is revoked and services stop signing it in until a new version of its configuration is"
        " applied.",
    )
    async def revoke(
        principal: Annotated[Principal, Depends(configure)],
        tenant: str,
        request: Request,
        db: Annotated[Connection, db_dependency],
    ) -> SalesforceConnectionView:
        spec = await _salesforce_spec(db, tenant)
        try:
            revoked = await connect_flow().revoke(tenant, spec, principal.actor, request_id_of(request))
        except ConnectError as exc:
            raise _problem(exc) from None
        return _view(revoked, spec.auth.mode)

    @router.get(
        CALLBACK_PATH.removeprefix("/api/v1"),
        response_model=SalesforceConnectionView,
        summary="Where Salesforce sends the browser back (authenticated by `state` alone, no bearer token)",
        description="An HTML page when the client accepts text/html (a browser), JSON otherwise.",
    )
    async def oauth_callback(
        request: Request,
        response: Response,
        state: Annotated[str | None, Query(description="The state of the authorize URL.")] = None,
        code: Annotated[str | None, Query(description="The authorization code.")] = None,
        error: Annotated[str | None, Query(description="Salesforce's error, e.g. access_denied.")] = None,
        error_description: Annotated[str | None, Query()] = None,
    ) -> SalesforceConnectionView | HTMLResponse:
        given = {"state": state, "code": code, "error": error, "error_description": error_description}
        params = {name: value for name, value in given.items() if value is not None}
        try:
            connected = await connect_flow().complete(params, request_id_of(request))
        except ConnectError as exc:
            if _wants_html(request):
                return _page(exc.status, "Salesforce was not connected", str(exc))
            raise _problem(exc, _CALLBACK_HEADERS) from None
        if _wants_html(request):
            return _page(
                200,
                "Salesforce connected",
                f"Tenant {connected.tenant_id} is connected to org {connected.org_id} as {connected.username}."
                " You can close this window.",
                f"/tenants/{quote(connected.tenant_id, safe='')}/connection",
            )
        response.headers.update(_CALLBACK_HEADERS)
        # The callback completes only oauth_pkce authorizations.
        return _view(connected, AuthMode.OAUTH_PKCE)

    return router

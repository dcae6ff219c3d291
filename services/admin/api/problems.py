"""Every error of the admin API as ``application/problem+json`` (RFC 9457), and nothing else.

Handlers here replace FastAPI's and Starlette's default bodies (404 for unknown routes, 405,
validation errors) and catch everything else as a bare 500: a response never carries a stack trace,
an exception message or a DSN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.admin.config_store import DATABASE_ERRORS
from services.common.tenant_config.validation import format_path

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
# The problem types that add meaning to their status; the rest are about:blank (RFC 9457 §4.2.1).
INVALID_REQUEST = "urn:duplex:problem:invalid-request"
INVALID_DOCUMENT = "urn:duplex:problem:invalid-document"
MALFORMED_BODY = "urn:duplex:problem:malformed-body"


# For the OpenAPI document: what every 4xx and 5xx answer is.
_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "about:blank, or a urn:duplex:problem:* URI"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "requestId": {"type": "string", "description": "Also in the X-Request-Id header and the audit log."},
    },
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    kind: {"description": "A problem document (RFC 9457)", "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
    for kind in ("4XX", "5XX")
}


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ApiError(Exception):
    """Raised anywhere in a request; rendered by :func:`install_problem_handlers`."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        self.errors = tuple(errors)
        self.headers = dict(headers or {})


def render(problem: ApiError, request_id: str | None = None) -> dict[str, Any]:
    """The response body of ``problem``."""
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title or HTTPStatus(problem.status).phrase,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    if request_id:
        body["requestId"] = request_id
    return body


def field_name(loc: Sequence[str | int]) -> str:
    """``("body", "tenants", 0)`` is ``tenants[0]``; ``("query", "from")`` is ``query.from``."""
    parts = tuple(loc[1:]) if loc and loc[0] == "body" else tuple(loc)
    return format_path(parts) or "body"


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """Pydantic's (or FastAPI's) errors as a 422 with one entry per field."""
    return ApiError(
        422,
        title="Invalid request",
        detail="the request has invalid fields; see errors",
        type=INVALID_REQUEST,
        errors=[FieldError(field_name(tuple(e["loc"])), str(e["msg"])) for e in errors],
    )


def request_id_of(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def problem_response(problem: ApiError, request_id: str | None) -> JSONResponse:
    headers = dict(problem.headers)
    if request_id:
        # Set here too: a 500 is answered outside the middleware that sets it on every other response.
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(
        render(problem, request_id), status_code=problem.status, headers=headers, media_type=PROBLEM_JSON
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    # Starlette's Allow names only the first route that matched the path; HTTP wants them all. Asking
    # each route (included routers too) about each method needs no knowledge of how they nest.
    routes = request.app.router.routes
    return ", ".join(
        m for m in _METHODS if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)
    )


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem_response(exc, request_id_of(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own: unknown routes (404) and methods (405, with its Allow header).
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        problem = ApiError(exc.status_code, headers=headers)
        return problem_response(problem, request_id_of(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(invalid_request(exc.errors()), request_id_of(request))

    async def on_database_error(request: Request, exc: Exception) -> JSONResponse:
        # The reason (host, port, server message) is for the operator's log, not the caller.
        log.error("database unavailable: %s", exc, extra={"request_id": request_id_of(request)})
        problem = ApiError(503, detail="the database is unavailable; try again later")
        return problem_response(problem, request_id_of(request))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        detail = "an unexpected error occurred; see the server log" + (f" (request {request_id})" if request_id else "")
        return problem_response(ApiError(500, detail=detail), request_id)

    app.add_exception_handler(ApiError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, on_database_error)
    # Starlette runs this one outermost and then re-raises, so the traceback reaches the server log.
    app.add_exception_handler(Exception, on_unexpected)

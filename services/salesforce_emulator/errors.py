"""Salesforce's error shapes.

REST errors are a JSON array of ``{"message", "errorCode", "fields"}``; per-record errors inside
sObject Collections and Composite use ``statusCode`` instead of ``errorCode``.

Every answer the web framework would otherwise give in its own words (an unknown path, a method a
path does not take, an unreadable request, an unexpected exception) is given in Salesforce's shape:
clients parse error bodies as that array, and ``{"detail": "Not Found"}`` breaks them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# The framework's own HTTP errors, as Salesforce names them.
_HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 415: "UNSUPPORTED_MEDIA_TYPE"}


@dataclass
class SalesforceError(Exception):
    """An error Salesforce would report, with its HTTP status and error code."""

    http_status: int
    error_code: str
    message: str
    fields: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Messages quote what was sent; a lone surrogate in them would make the answer itself fail.
        self.message = _encodable(self.message)
        self.fields = [_encodable(name) for name in self.fields]

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"

    def rest_body(self) -> list[dict[str, Any]]:
        """The body of a failed REST call."""
        item: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields:
            item["fields"] = self.fields
        return [item]

    def item_error(self) -> dict[str, Any]:
        """One entry of a collection/composite item's ``errors`` list."""
        return {"statusCode": self.error_code, "message": self.message, "fields": list(self.fields)}


def _encodable(text: str) -> str:
    """``text`` with any lone surrogate spelled as its escape, so that it encodes as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def invalid_session() -> SalesforceError:
    return SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


def not_found(message: str = "The requested resource does not exist") -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", message)


def request_limit_exceeded() -> SalesforceError:
    return SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")


def method_not_allowed(method: str, allowed: str) -> SalesforceError:
    """405 for a method a resource does not take; ``allowed`` as in an ``Allow`` header."""
    methods = ",".join(m.strip() for m in allowed.split(",") if m.strip())
    return SalesforceError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {methods}")


def unknown_exception() -> SalesforceError:
    # Salesforce's ErrorIds look like 1234567890-12345 (-987654321).
    error_id = f"{secrets.randbelow(10**10)}-{secrets.randbelow(10**5)} (-{secrets.randbelow(10**9)})"
    return SalesforceError(
        500,
        "UNKNOWN_EXCEPTION",
        f"An unexpected error occurred. Please include this ErrorId if you contact support: {error_id}",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as Salesforce does (see the module docstring), never as a stack trace."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SalesforceError)
        return JSONResponse(exc.rest_body(), status_code=exc.http_status)

    async def handle_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            error = method_not_allowed(request.method, headers.get("Allow", ""))
        elif exc.status_code == 404:
            error = not_found()
        else:
            code = _HTTP_ERROR_CODES.get(
                exc.status_code, "INVALID_INPUT" if exc.status_code < 500 else "UNKNOWN_EXCEPTION"
            )
            error = SalesforceError(exc.status_code, code, str(exc.detail))
        return JSONResponse(error.rest_body(), status_code=error.http_status, headers=headers)

    async def handle_invalid(_: Request, exc: Exception) -> JSONResponse:
        # Only the emulator's own admin API declares typed parameters and bodies; its status stays 422.
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return JSONResponse(SalesforceError(422, "INVALID_INPUT", problems).rest_body(), status_code=422)

    async def handle_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The server error middleware re-raises after this reply, so the traceback is still logged.
        error = unknown_exception()
        return JSONResponse(error.rest_body(), status_code=error.http_status)

    app.add_exception_handler(SalesforceError, handle)
    app.add_exception_handler(HTTPException, handle_http)
    app.add_exception_handler(RequestValidationError, handle_invalid)
    app.add_exception_handler(Exception, handle_unexpected)

"""Salesforce's error shapes.

REST errors are a JSON array of ``{"message", "errorCode", "fields"}``; per-record errors inside
sObject Collections and Composite use ``statusCode`` instead of ``errorCode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class SalesforceError(Exception):
    """An error Salesforce would report, with its HTTP status and error code."""

    http_status: int
    error_code: str
    message: str
    fields: list[str] = field(default_factory=list)

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


def invalid_session() -> SalesforceError:
    return SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


def not_found(message: str = "The requested resource does not exist") -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", message)


def request_limit_exceeded() -> SalesforceError:
    return SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")


def install_error_handlers(app: FastAPI) -> None:
    """Render SalesforceError as Salesforce does, never as a stack trace."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SalesforceError)
        return JSONResponse(exc.rest_body(), status_code=exc.http_status)

    app.add_exception_handler(SalesforceError, handle)

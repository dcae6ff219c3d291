"""What every request passes through before routing: a request id, and a cap on the body size.

Both are plain ASGI middleware so that they also cover requests no route matches.
"""

from __future__ import annotations

import json
import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.admin.api.problems import PROBLEM_JSON, REQUEST_ID_HEADER, ApiError, render

# A caller's own id is kept when it is plausible (so one id follows a request across systems);
# anything else is replaced, so nothing odd reaches the logs and the audit trail.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestId:
    """Gives each request an id (``request.state.request_id``) and returns it in ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyTooLargeError(Exception):
    """Raised from ``receive`` when a body without a Content-Length grows past the limit."""


def too_large(limit: int) -> ApiError:
    return ApiError(413, detail=f"the request body is larger than {limit} bytes")


class LimitBody:
    """Refuses bodies over ``limit`` bytes with 413, before any of them is buffered.

    A declared Content-Length is checked up front; a streamed body is counted as it arrives and
    :class:`BodyTooLargeError` is raised to whatever reads it (rendered as the same 413).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        # A malformed Content-Length never gets here: the HTTP server refuses it.
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        problem = too_large(self.limit)
        request_id = scope.get("state", {}).get("request_id")
        body = json.dumps(render(problem, request_id)).encode()
        headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
        # The unread body is not worth draining: ask the client to close instead.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

"""Response header names as Salesforce writes them: ``Content-Type``, ``Sforce-Limit-Info``, ``Location``.

HTTP says header names are case-insensitive, but clients are not always so forgiving: a widely used
connector copies response headers into a plain dictionary and looks up ``Content-Type``, so every
Bulk API 2.0 result failed against lower-case names. Starlette lower-cases every name it is given;
this middleware restores the canonical spelling on every HTTP response (REST, Bulk, OAuth, SOAP and
the framework's own errors), and the HTTP server (uvicorn over h11) writes names exactly as handed
to it. It also stamps ``Date`` itself, in place of the server's lower-case one.
"""

from __future__ import annotations

import email.utils

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Names whose canonical spelling is not "each dash-separated word capitalised".
_SPECIAL = {
    b"etag": b"ETag",
    b"sforce-numberofrecords": b"Sforce-NumberOfRecords",
    b"www-authenticate": b"WWW-Authenticate",
    b"content-md5": b"Content-MD5",
    b"x-xss-protection": b"X-XSS-Protection",
}


def canonical_name(name: bytes) -> bytes:
    """``content-type`` → ``Content-Type``; ``sforce-numberofrecords`` → ``Sforce-NumberOfRecords``."""
    lowered = name.lower()
    special = _SPECIAL.get(lowered)
    if special is not None:
        return special
    return b"-".join(part[:1].upper() + part[1:] for part in lowered.split(b"-"))


class CanonicalHeaders:
    """ASGI middleware: canonical header names and a ``Date`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_canonical(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(canonical_name(bytes(k)), bytes(v)) for k, v in message.get("headers", [])]
                if not any(k == b"Date" for k, _ in headers):
                    headers.append((b"Date", email.utils.formatdate(usegmt=True).encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_canonical)


class SalesforceApp(FastAPI):
    """FastAPI whose every response, even the server-error middleware's, leaves through :class:`CanonicalHeaders`.

    ``add_middleware`` cannot do this: Starlette always puts its server-error middleware outside the
    user's middleware, so a 500 would keep lower-case names.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return CanonicalHeaders(super().build_middleware_stack())

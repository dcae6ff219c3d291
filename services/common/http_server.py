"""uvicorn inside a composition root: a socket bound up front, serving while a block runs.

Binding the socket here (rather than in uvicorn) lets port 0 pick a free port that can be reported,
and leaves signal handling to :func:`services.common.service.serve`. The admin API and the
Salesforce emulator serve HTTP this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

# Requests in flight get this long to finish when the service stops.
GRACEFUL_SHUTDOWN_SECONDS = 5


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers, telling when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()


class Listener:
    """A listening TCP socket, then (``serve``) uvicorn answering on it."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets whose listener says TCP,
        # and without it small responses wait for delayed ACKs.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            raise
        self.port = int(self._socket.getsockname()[1])
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def close(self) -> None:
        self._socket.close()

    async def serving(self) -> bool:
        """A readiness check: uvicorn has started and is still running."""
        return self._server is not None and self._server.started and self._task is not None and not self._task.done()

    @contextlib.asynccontextmanager
    async def serve(self, app: ASGIApp, **options: Any) -> AsyncIterator[None]:
        """uvicorn serving ``app`` for the block's duration; fails if it cannot start.

        ``options`` are further ``uvicorn.Config`` arguments (TLS files, headers).
        """
        config = uvicorn.Config(
            app,
            lifespan="off",
            # Services log structured lines of their own; uvicorn's access lines would add an
            # unstructured one per request, with query strings that may carry tokens.
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            **options,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[self._socket]))
        self._server, self._task = server, task
        try:
            started = asyncio.create_task(server.up.wait())
            await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if not server.started:
                # Awaiting the task (below) raises whatever stopped uvicorn, if it raised.
                msg = "the HTTP server stopped before it started"
                raise RuntimeError(msg)
            yield
        finally:
            server.should_exit = True
            await task

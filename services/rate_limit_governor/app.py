"""Composition root: settings in, a running governor out."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from services.common.db import create_pool
from services.common.metrics import Metrics
from services.rate_limit_governor.ledger import Ledger
from services.rate_limit_governor.server import Governor, start_server
from services.rate_limit_governor.settings import GovernorSettings

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_governor(
    settings: GovernorSettings, *, metrics: Metrics | None = None
) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    """The governor serving on its port until the block exits."""
    async with create_pool(settings.postgres) as pool:
        governor = Governor(Ledger(pool, settings), metrics=metrics)
        server, port = await start_server(governor, settings.host, settings.port)
        log.info("governor serving", extra={"port": port})
        try:
            yield server, port
        finally:
            await server.stop(grace=5)


async def serve(settings: GovernorSettings, *, metrics: Metrics | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_governor(settings, metrics=metrics):
        await stop.wait()

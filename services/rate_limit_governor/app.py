"""Composition root: settings in, a running governor out.

This is the smallest service and the worked example in ``docs/architecture.md``: every resource is
opened in order on one exit stack (the pool, then the gRPC server), the block runs while the
service does, and everything closes in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from services.common.db import create_pool, database_ready
from services.common.service import Health, Running
from services.common.telemetry import Telemetry
from services.rate_limit_governor.ledger import Ledger
from services.rate_limit_governor.server import Governor, start_server
from services.rate_limit_governor.settings import GovernorSettings

log = logging.getLogger(__name__)

# Connections get this long to finish their calls when the governor stops.
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True, kw_only=True)
class RunningGovernor(Running):
    port: int


@asynccontextmanager
async def run(settings: GovernorSettings, telemetry: Telemetry | None = None) -> AsyncIterator[RunningGovernor]:
    """The governor serving gRPC on its port until the block exits."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(create_pool(settings.postgres))
        governor = Governor(Ledger(pool, settings), metrics=telemetry.metrics if telemetry else None)
        server, port = await start_server(governor, settings.host, settings.port, settings.link)
        stack.push_async_callback(server.stop, STOP_GRACE_SECONDS)
        log.info("governor serving", extra={"port": port})
        yield RunningGovernor(health=Health(ready=(database_ready(pool),)), port=port)

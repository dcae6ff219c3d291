"""Liveness, readiness and metrics on one port (``TELEMETRY_METRICS_PORT``), answered by the
service's own event loop.

- ``/healthz``: 200 while the event loop answers and the service's liveness checks hold (a halted
  consumer fails them), decided within :data:`CHECK_WITHIN`; 503 otherwise. A loop stuck in
  blocking work answers nothing, and the probe's own timeout fails it: the point of serving the
  probes from the loop rather than from a thread (a thread kept answering for a frozen service).
  While the service is still starting it is alive: 200.
- ``/readyz``: 200 once every resource is open and the readiness checks hold (broker and database
  reachable, ...); 503 while starting and whenever they do not.
- ``/metrics``: Prometheus' text format of the process's registry.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:  # services.common.service serves these probes
    from services.common.service import Check, Running

CHECK_WITHIN: Final = 1.0


class Probes:
    """The three endpoints over the service's :class:`Running` (None while it starts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running: Running | None = None
        self._registry = registry

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics),
            ]
        )

    async def _healthz(self, request: Request) -> Response:
        if self.running is None:
            return PlainTextResponse("starting\n")
        return await _answer(self.running.health.is_live, "live", "not live")

    async def _readyz(self, request: Request) -> Response:
        if self.running is None:
            return PlainTextResponse("starting\n", status_code=503)
        return await _answer(self.running.health.is_ready, "ready", "not ready")

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)


async def _answer(check: Check, yes: str, no: str) -> Response:
    try:
        async with asyncio.timeout(CHECK_WITHIN):
            holds = await check()
    except TimeoutError:
        holds = False
    return PlainTextResponse(f"{yes if holds else no}\n", status_code=200 if holds else 503)

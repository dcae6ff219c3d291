"""One entry and one lifecycle for every service.

A service is three things:

* a settings class (a :class:`~services.common.settings.ServiceSettings`),
* a composition root: an async context manager ``run(settings, telemetry)`` that opens every
  resource in order on one :class:`~contextlib.AsyncExitStack`, starts consuming or serving, yields
  a :class:`Running`, and closes everything in reverse order when the block exits,
* a ``__main__`` of two lines: ``main(TheSettings, run)``.

:func:`main` loads the settings, sets up logging (secrets redacted), tracing and metrics, enters
the composition root and waits for SIGINT/SIGTERM or for a consumer to halt. The exit status is 0
after a stop signal and :data:`EXIT_HALTED` after a halt, so Kubernetes restarts a halted pod and
the crash loop is visible. Probes ask :attr:`Running.health`, on ``TELEMETRY_METRICS_PORT``
(:mod:`services.common.probes`: ``/healthz``, ``/readyz`` and ``/metrics``, answered by the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Final, NoReturn, TypeVar

from services.common.dlq import Halt
from services.common.http_server import Listener
from services.common.logging import configure_logging, secrets_of
from services.common.probes import Probes
from services.common.settings import ServiceSettings
from services.common.telemetry import Telemetry, setup_telemetry

log = logging.getLogger(__name__)

EXIT_HALTED: Final = 70
"""Exit status of a service whose consumer halted (EX_SOFTWARE): restart only after a look."""

READY_MESSAGE: Final = "service running"
"""Logged once every resource is open and the service consumes or serves."""

S = TypeVar("S", bound=ServiceSettings)

Check = Callable[[], Awaitable[bool]]
"""One health condition: True while it holds. It must answer quickly and never raise."""


def in_background(stack: AsyncExitStack, work: Coroutine[object, object, None], name: str) -> None:
    """Run ``work`` as a task until ``stack`` closes, which cancels it and waits for it to end."""
    task = asyncio.create_task(work, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


async def _all(checks: tuple[Check, ...]) -> bool:
    results = await asyncio.gather(*(check() for check in checks))
    return all(results)


@dataclass(frozen=True)
class Health:
    """The checks a service declares for its liveness and readiness probes.

    Liveness: the process can still make progress (restart it when not). Readiness: it is
    doing its work now (take it out of rotation when not). With no checks, both hold while the
    event loop answers at all.
    """

    live: tuple[Check, ...] = ()
    ready: tuple[Check, ...] = ()

    async def is_live(self) -> bool:
        return await _all(self.live)

    async def is_ready(self) -> bool:
        return await _all(self.ready)


@dataclass(frozen=True)
class Running:
    """A service while its composition root's block runs."""

    health: Health = field(default_factory=Health)
    # Tripped by a consumer that gave up (see services.common.dlq): the process then exits.
    halt: Halt = field(default_factory=Halt)


Run = Callable[[S, Telemetry], AbstractAsyncContextManager[Running]]
"""A composition root: settings and telemetry in, a running service for the block's duration."""


async def serve(service: AbstractAsyncContextManager[Running], probes: Probes | None = None, port: int = 0) -> int:
    """Run ``service`` until SIGINT/SIGTERM or a halt; the process exit status.

    With ``port`` > 0, ``probes`` answer on it from before the service starts until it has stopped.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with AsyncExitStack() as stack:
            if probes is not None and port > 0:
                listener = Listener("0.0.0.0", port)
                stack.callback(listener.close)
                await stack.enter_async_context(listener.serve(probes.app()))
            running = await stack.enter_async_context(service)
            if probes is not None:
                probes.running = running
            running.halt.on_trip(lambda _error: stop.set())
            # Process supervisors (devstack, the e2e tests) wait for this line.
            log.info(READY_MESSAGE)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if running.halt.error is not None:
        log.critical("service halted: %s", running.halt.error)
        return EXIT_HALTED
    return 0


def main(load_settings: Callable[[], S], run: Run[S]) -> NoReturn:
    """The whole of every service's ``__main__``: load settings, set up telemetry, serve, exit.

    ``load_settings`` is the settings class itself (read from the environment), or a CLI's
    ``functools.partial`` of it with the flags given.
    """
    settings = load_settings()
    configure_logging(settings.telemetry, service_name=settings.service_name, secrets=secrets_of(settings))
    telemetry = setup_telemetry(settings.telemetry, service_name=settings.service_name)
    try:
        status = asyncio.run(
            serve(run(settings, telemetry), Probes(telemetry.registry), settings.telemetry.metrics_port)
        )
    finally:
        telemetry.shutdown()
    sys.exit(status)

"""The one entry and lifecycle every service runs through (services.common.service)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from services.common.errors import ConsumerHalted
from services.common.service import EXIT_HALTED, Health, Running, serve

pytestmark = pytest.mark.unit


class Recorder:
    """A composition root that opens two resources on one exit stack and notes every step."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.running = Running()
        self.entered = asyncio.Event()

    @asynccontextmanager
    async def run(self) -> AsyncIterator[Running]:
        async with AsyncExitStack() as stack:
            for name in ("pool", "broker"):
                self.steps.append(f"open {name}")
                stack.callback(self.steps.append, f"close {name}")
            self.entered.set()
            yield self.running


async def test_a_halt_stops_the_service_with_a_non_zero_status_after_closing_everything() -> None:
    service = Recorder()
    task = asyncio.create_task(serve(service.run()))
    await service.entered.wait()
    service.running.halt.trip(ConsumerHalted("too much garbage", topic="t"))
    assert await asyncio.wait_for(task, 5) == EXIT_HALTED
    assert service.steps == ["open pool", "open broker", "close broker", "close pool"]


async def test_a_halt_before_the_block_runs_still_stops_it() -> None:
    service = Recorder()
    service.running.halt.trip(ConsumerHalted("already broken"))
    assert await asyncio.wait_for(serve(service.run()), 5) == EXIT_HALTED


async def test_sigterm_stops_the_service_cleanly() -> None:
    service = Recorder()
    task = asyncio.create_task(serve(service.run()))
    await service.entered.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert service.steps[-1] == "close pool"


async def test_a_failing_start_closes_what_was_opened_and_raises() -> None:
    closed: list[str] = []

    @asynccontextmanager
    async def run() -> AsyncIterator[Running]:
        async with AsyncExitStack() as stack:
            stack.callback(closed.append, "pool")
            raise ConnectionRefusedError("kafka is not there")
            yield Running()  # pragma: no cover - never reached

    with pytest.raises(ConnectionRefusedError):
        await serve(run())
    assert closed == ["pool"]


async def test_health_holds_only_while_every_check_does() -> None:
    async def yes() -> bool:
        return True

    async def no() -> bool:
        return False

    assert await Health().is_live()
    assert await Health().is_ready()
    health = Health(live=(yes,), ready=(yes, no))
    assert await health.is_live()
    assert not await health.is_ready()

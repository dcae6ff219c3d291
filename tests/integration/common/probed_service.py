"""A service with nothing but the lifecycle, for the probes' test
(``python -m tests.integration.common.probed_service``).

Its loop blocks (``time.sleep``, as a CPU-bound or blocking call in a handler would) for
``PROBED_FREEZE_SECONDS`` whenever ``PROBED_FREEZE_FILE`` appears, then removes the file; it is
ready while ``PROBED_UNREADY_FILE`` does not exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.service import Health, Running, in_background, main
from services.common.settings import ServiceSettings
from services.common.telemetry import Telemetry


class ProbedSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROBED_")

    service_name: str = "probed"
    freeze_file: Path
    unready_file: Path
    freeze_seconds: float = 3.0


async def _freezing(settings: ProbedSettings) -> None:
    while True:
        if settings.freeze_file.exists():
            time.sleep(settings.freeze_seconds)  # noqa: ASYNC251
            settings.freeze_file.unlink()
        await asyncio.sleep(0.05)


@asynccontextmanager
async def run(settings: ProbedSettings, telemetry: Telemetry | None = None) -> AsyncIterator[Running]:
    async def ready() -> bool:
        return not settings.unready_file.exists()

    async with AsyncExitStack() as stack:
        in_background(stack, _freezing(settings), "freezing")
        yield Running(health=Health(ready=(ready,)))


if __name__ == "__main__":
    main(ProbedSettings, run)

"""Capped exponential backoff with jitter, and a retry loop that needs no real sleeps in tests.

The delay before retry ``n`` (1-based) is drawn uniformly from ``[0, min(cap, base * factor**(n-1))]``
("full jitter"), so that many consumers failing at the same moment do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from services.common.errors import RetryableError

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    ``max_attempts`` counts every call, the first included; ``None`` retries forever (only for
    loops that can never skip work and have another way out, such as shutdown).
    """

    base_delay: float = 0.2
    max_delay: float = 30.0
    factor: float = 2.0
    max_attempts: int | None = 10
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (RetryableError,)
    # Seeded in tests; the default draws from the process-wide generator.
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        # Capping the exponent first keeps huge retry counts from overflowing a float.
        exponent = min(retry - 1, 64)
        return min(self.max_delay, self.base_delay * self.factor**exponent)

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry``."""
        ceiling = self.ceiling(retry)
        return self.rng.uniform(0.0, ceiling) if self.jitter else ceiling

    def gives_up_after(self, attempts: int) -> bool:
        """True when ``attempts`` calls have failed and no further one is allowed."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        return isinstance(error, self.retry_on)

    async def run(self, call: Callable[[], Awaitable[T]], *, sleep: Sleep = asyncio.sleep) -> T:
        """Await ``call()`` until it succeeds, retrying the errors in ``retry_on``.

        The last error propagates once attempts run out; errors outside ``retry_on``
        propagate at once.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except self.retry_on:
                if self.gives_up_after(attempt):
                    raise
            await sleep(self.delay(attempt))


NO_RETRY = RetryPolicy(max_attempts=1)

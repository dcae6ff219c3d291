"""Capped exponential backoff with jitter; no real sleeps."""

from __future__ import annotations

import random

import pytest

from services.common.errors import InvalidEvent, RetryableError
from services.common.retry import NO_RETRY, RetryPolicy

pytestmark = pytest.mark.unit


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def test_ceiling_doubles_until_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=2.0, max_delay=10.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_huge_retry_numbers_stay_at_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert policy.ceiling(10_000) == 30.0


def test_jitter_stays_within_zero_and_the_ceiling_and_varies() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, rng=random.Random(7))
    delays = [policy.delay(4) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100


async def test_retries_a_transient_failure_then_returns() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RetryableError("timeout")
        return "ok"

    sleeps = Sleeps()
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter=False)
    assert await policy.run(flaky, sleep=sleeps) == "ok"
    assert calls == 3
    assert sleeps.delays == [1.0, 2.0]


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise RetryableError(f"attempt {calls}")

    sleeps = Sleeps()
    policy = RetryPolicy(base_delay=0.1, max_attempts=4, jitter=False)
    with pytest.raises(RetryableError, match="attempt 4"):
        await policy.run(down, sleep=sleeps)
    assert calls == 4
    assert len(sleeps.delays) == 3


async def test_errors_outside_retry_on_propagate_at_once() -> None:
    sleeps = Sleeps()

    async def invalid() -> None:
        raise InvalidEvent("never")

    with pytest.raises(InvalidEvent):
        await RetryPolicy().run(invalid, sleep=sleeps)
    assert sleeps.delays == []


async def test_custom_retry_on() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError
        return calls

    policy = RetryPolicy(retry_on=(TimeoutError,), jitter=False)
    assert await policy.run(flaky, sleep=Sleeps()) == 2
    assert policy.is_retryable(TimeoutError())
    assert not policy.is_retryable(ValueError())


def test_gives_up_after() -> None:
    assert NO_RETRY.gives_up_after(1)
    assert not RetryPolicy(max_attempts=3).gives_up_after(2)
    assert RetryPolicy(max_attempts=3).gives_up_after(3)
    assert not RetryPolicy(max_attempts=None).gives_up_after(10**9)


@pytest.mark.parametrize(
    "kwargs",
    [{"base_delay": -1.0}, {"max_delay": -1.0}, {"factor": 0.5}, {"max_attempts": 0}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retries_are_numbered_from_one() -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        RetryPolicy().delay(0)

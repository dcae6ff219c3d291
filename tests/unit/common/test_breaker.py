"""The dead-letter circuit breaker: when dead-lettering gives way to halting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.dlq import CircuitBreaker, DlqLimit

pytestmark = pytest.mark.unit


def first_trip(limit: DlqLimit, outcomes: str) -> int | None:
    """Feed outcomes ('v' valid, 'i' invalid); the index of the invalid event that trips, if any."""
    breaker = CircuitBreaker(limit)
    for index, outcome in enumerate(outcomes):
        if outcome == "v":
            breaker.record_valid()
            continue
        if breaker.assess_invalid() is not None:
            return index
        breaker.record_invalid()
    return None


CONSECUTIVE_3 = DlqLimit(max_invalid_ratio=1.0, max_consecutive_invalid=3, window=10, min_samples=1)
RATIO_HALF_OF_4 = DlqLimit(max_invalid_ratio=0.5, max_consecutive_invalid=100, window=4, min_samples=4)
RATIO_TENTH_MIN_5 = DlqLimit(max_invalid_ratio=0.1, max_consecutive_invalid=100, window=10, min_samples=5)


@pytest.mark.parametrize(
    ("limit", "outcomes", "trips_at"),
    [
        pytest.param(CONSECUTIVE_3, "iii", None, id="consecutive: at the limit is still allowed"),
        pytest.param(CONSECUTIVE_3, "iiii", 3, id="consecutive: one past the limit trips"),
        pytest.param(CONSECUTIVE_3, "iiviiii", 6, id="consecutive: a valid event resets the run"),
        pytest.param(CONSECUTIVE_3, "iivi" * 10, None, id="consecutive: never more than three in a row"),
        pytest.param(
            DlqLimit(max_invalid_ratio=1.0, max_consecutive_invalid=0, window=10, min_samples=1),
            "vvi",
            2,
            id="consecutive: zero tolerance trips on the first invalid event",
        ),
        pytest.param(RATIO_HALF_OF_4, "ivi", None, id="ratio: not judged below min_samples"),
        pytest.param(RATIO_HALF_OF_4, "ivii", 3, id="ratio: 3 of 4 is above one half"),
        pytest.param(RATIO_HALF_OF_4, "ivivi", None, id="ratio: the oldest falls out, 2 of 4 is not above"),
        pytest.param(RATIO_HALF_OF_4, "iivvvvii", None, id="ratio: old invalid events slide out"),
        pytest.param(RATIO_HALF_OF_4, "iivvvviii", 8, id="ratio: 3 of the last 4 trips"),
        pytest.param(RATIO_TENTH_MIN_5, "i", None, id="ratio: one event is too few to judge"),
        pytest.param(RATIO_TENTH_MIN_5, "vvvvi", 4, id="ratio: 1 of 5 is above a tenth"),
        pytest.param(RATIO_TENTH_MIN_5, "v" * 20 + "i", None, id="ratio: 1 of 10 is not above a tenth"),
        pytest.param(RATIO_TENTH_MIN_5, "v" * 20 + "iv" * 3, 22, id="ratio: 2 of 10 is"),
        pytest.param(DlqLimit(), "v" * 1000, None, id="defaults: valid input never trips"),
        pytest.param(DlqLimit(), "i" * 99, None, id="defaults: below min_samples and the run limit"),
        pytest.param(DlqLimit(), "v" * 100 + "i" * 101, 200, id="defaults: 100 in a row is the most"),
        pytest.param(DlqLimit(), "vi" * 300 + "i", 600, id="defaults: a bare majority invalid trips"),
    ],
)
def test_breaker_trips_exactly_where_the_limit_is_crossed(limit: DlqLimit, outcomes: str, trips_at: int | None) -> None:
    assert first_trip(limit, outcomes) == trips_at


def test_the_trip_reason_names_the_limit() -> None:
    breaker = CircuitBreaker(CONSECUTIVE_3)
    for _ in range(3):
        breaker.record_invalid()
    assert breaker.assess_invalid() == "more than 3 invalid events in a row"

    ratio = CircuitBreaker(RATIO_HALF_OF_4)
    for outcome in "ivi":
        ratio.record_valid() if outcome == "v" else ratio.record_invalid()
    assert ratio.assess_invalid() == "3 of the last 4 events invalid (limit 50%)"


def test_a_tripped_breaker_stays_open_whatever_comes_next() -> None:
    breaker = CircuitBreaker(CONSECUTIVE_3)
    breaker.trip("bad deploy")
    for _ in range(10):
        breaker.record_valid()
    assert breaker.tripped == "bad deploy"
    assert breaker.assess_invalid() == "bad deploy"
    breaker.trip("something else")
    assert breaker.tripped == "bad deploy"


def test_counters_follow_the_window() -> None:
    breaker = CircuitBreaker(RATIO_HALF_OF_4)
    for outcome in "iiiv":
        breaker.record_valid() if outcome == "v" else breaker.record_invalid()
    assert breaker.invalid_ratio == 0.75
    assert breaker.consecutive_invalid == 0
    breaker.record_invalid()  # pushes the first "i" out
    assert breaker.invalid_ratio == 0.75
    assert breaker.consecutive_invalid == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_invalid_ratio": -0.1},
        {"max_invalid_ratio": 1.5},
        {"max_consecutive_invalid": -1},
        {"window": 10, "min_samples": 11},
        {"min_samples": 0},
    ],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        DlqLimit(**kwargs)  # type: ignore[arg-type]


@given(
    outcomes=st.lists(st.booleans(), max_size=200),
    ratio=st.floats(min_value=0.0, max_value=1.0),
    consecutive=st.integers(min_value=0, max_value=20),
    window=st.integers(min_value=1, max_value=30),
    data=st.data(),
)
def test_no_accepted_invalid_event_ever_exceeds_the_limit(
    outcomes: list[bool], ratio: float, consecutive: int, window: int, data: st.DataObject
) -> None:
    """Against a brute-force model: whatever the breaker lets through stays within the limit."""
    min_samples = data.draw(st.integers(min_value=1, max_value=window))
    limit = DlqLimit(
        max_invalid_ratio=ratio, max_consecutive_invalid=consecutive, window=window, min_samples=min_samples
    )
    breaker = CircuitBreaker(limit)
    history: list[bool] = []
    for invalid in outcomes:
        if not invalid:
            breaker.record_valid()
            history.append(False)
            continue
        candidate = [*history, True]
        run = len(candidate) - len("".join("i" if x else "v" for x in candidate).rstrip("i"))
        recent = candidate[-window:]
        over = run > consecutive or (len(recent) >= min_samples and sum(recent) / len(recent) > ratio)
        assert (breaker.assess_invalid() is not None) == over
        if over:
            return
        breaker.record_invalid()
        history.append(True)

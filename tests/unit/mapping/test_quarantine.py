"""The quarantine rules (services.mapping.quarantine): when a pair is quarantined, that it is that
pair only, when too many bad pairs are left to the service-wide breaker, and how it ends."""

from __future__ import annotations

import pytest

from services.mapping.quarantine import PairKey, QuarantineLimit, Quarantines

pytestmark = pytest.mark.unit

A: PairKey = ("tenant-a", "partners")
B: PairKey = ("tenant-b", "partners")
C: PairKey = ("tenant-c", "contacts")
LIMIT = QuarantineLimit(max_invalid_ratio=0.5, window=10, min_samples=4, cool_off_seconds=60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quarantines(limit: QuarantineLimit = LIMIT) -> tuple[Quarantines, Clock]:
    clock = Clock()
    return Quarantines(limit, clock=clock), clock


def feed(q: Quarantines, key: PairKey, outcomes: str, version: int | None = 1) -> list[int]:
    """Book ``outcomes`` ('x' rejected, '.' fine); the positions at which a quarantine began."""
    return [i for i, o in enumerate(outcomes) if q.record(key, version, rejected=o == "x") is not None]


def test_a_pair_is_quarantined_once_most_of_at_least_min_samples_were_rejected() -> None:
    q, _ = quarantines()
    feed(q, B, "....")  # another pair, so that one bad pair is not all of them
    # 3 of 3 rejected: too few samples; the 4th makes 4 of 4.
    assert feed(q, A, "xxxx") == [3]
    began = q.holding(A, 1)
    assert began is not None
    assert (began.rejected, began.samples) == (4, 4)
    assert "tenant-a" in began.reason
    assert "partners" in began.reason
    # Further outcomes are not booked while quarantined (its changes are not mapped at all).
    assert q.record(A, 1, rejected=True) is None


def test_half_or_less_rejected_is_not_enough_and_the_window_forgets_old_outcomes() -> None:
    q, _ = quarantines()
    feed(q, B, "....")
    assert feed(q, A, ".x.x.x.x.x") == []  # never more than half
    assert q.holding(A, 1) is None
    # Only the last 10 count: after plenty of fine ones, 6 rejections in a row are 6 of 10.
    assert feed(q, C, "........" + "xxxxxx") == [13]


def test_one_pair_quarantined_does_not_affect_another() -> None:
    q, _ = quarantines()
    feed(q, B, "..x.")
    assert feed(q, A, "xxxx") == [3]
    assert q.holding(A, 1) is not None
    assert q.holding(B, 1) is None
    # B's changes are still booked and B's own count decides for B.
    assert q.record(B, 1, rejected=False) is None
    assert q.holding(("tenant-a", "contacts"), 1) is None


def test_when_most_pairs_are_bad_they_are_left_to_the_service_wide_breaker() -> None:
    q, _ = quarantines()
    # One pair alone is never quarantined: a bad pair of one is a bad deploy.
    assert feed(q, A, "xxxxxxxx") == []
    assert q.holding(A, 1) is None
    q, _ = quarantines()
    feed(q, C, "....")
    assert feed(q, A, "xxxx") == [3]  # 1 of 2 pairs: contained
    assert feed(q, B, "xxxxxxxx") == []  # 2 of 3 would be more than half
    assert q.holding(B, 1) is None


def test_a_new_configuration_version_ends_the_quarantine_and_the_count_starts_afresh() -> None:
    q, _ = quarantines()
    feed(q, B, "....")
    feed(q, A, "xxxx")
    assert q.holding(A, 1) is not None
    assert q.holding(A, 2) is None
    ended = q.take_ended()
    assert [(e.tenant_id, e.pair, e.version) for e in ended] == [("tenant-a", "partners", 1)]
    assert q.take_ended() == []
    # Counting starts afresh under the new version: three more rejections are not yet enough.
    assert feed(q, A, "xxx", version=2) == []
    assert feed(q, A, "x", version=2) == [0]


def test_a_tenant_without_configuration_is_released_by_its_first_version() -> None:
    q, _ = quarantines()
    unmapped: PairKey = ("tenant-x", "app:partners")
    feed(q, B, "....")
    assert feed(q, unmapped, "xxxx", version=None) == [3]
    assert q.holding(unmapped, None) is not None
    assert q.holding(unmapped, 1) is None


def test_the_cool_off_ends_a_quarantine() -> None:
    q, clock = quarantines()
    feed(q, B, "....")
    feed(q, A, "xxxx")
    clock.now += 59
    assert q.take_ended() == []
    assert q.holding(A, 1) is not None
    clock.now += 1
    assert [e.pair for e in q.take_ended()] == ["partners"]
    assert q.holding(A, 1) is None


def test_pairs_seen_least_recently_are_forgotten_past_the_cap_and_reported_if_quarantined() -> None:
    q, _ = quarantines(QuarantineLimit(window=10, min_samples=4, max_tracked=3))
    feed(q, B, "....")
    feed(q, A, "xxxx")
    feed(q, C, ".")
    assert q.take_ended() == []
    feed(q, B, ".")  # B seen again: A is now the least recently seen
    feed(q, ("tenant-d", "partners"), ".")
    assert [e.tenant_id for e in q.take_ended()] == ["tenant-a"]
    assert q.holding(A, 1) is None


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        QuarantineLimit(window=5, min_samples=6)
    with pytest.raises(ValueError, match="ratios"):
        QuarantineLimit(max_invalid_ratio=1.5)

"""Quarantine of one tenant's object pair whose input is mostly bad. Pure: no I/O, clock injected.

The dead-letter circuit breaker (:mod:`services.common.dlq`) counts a whole topic: left alone,
one tenant's stream of business rejections (an object its configuration does not map, strings
over a field's length, changes of a tenant with no configuration) would trip it and halt mapping
for every tenant. So mapping counts each pair's own outcomes first:

* A **pair** is a tenant and an object pair of its configuration. A change of an object no pair
  maps, or of a tenant without a configuration, is counted under ``<side>:<object>`` instead.
  Input that cannot be attributed to an object (undecodable, breaking the contract, a payload
  tenant that does not match its record key) is never counted here: it always counts toward the
  service-wide breaker.
* A pair is **quarantined** when more than ``max_invalid_ratio`` of its last ``window`` changes
  (once at least ``min_samples`` were seen) were rejected. The rejection that tips it, and
  every later change of the pair, good or bad, is dead-lettered as *contained*
  (:attr:`services.common.errors.InvalidEvent.contained`) with a reason starting
  ``QUARANTINED:``: the service-wide breaker does not count them, so every other pair and
  tenant goes on. The rejections before that count service-wide as ever. (Outcomes are booked
  after a batch is mapped, so the pair's good changes later in the batch that tipped it are
  still mapped; from the next batch on, none is.) Its beginning is one ``pair.quarantined`` row
  in the tenant's sync log, a warning and ``duplex_quarantined_pairs`` = 1; its changes are not
  logged one by one but counted in ``duplex_quarantined_events_total``.
* A bad deploy still halts the service: a pair is only quarantined while the quarantined pairs
  stay at most ``max_quarantined_share`` of the pairs seen. When (nearly) every pair is bad, the
  rejections stay uncontained and the breaker trips as before. A deployment with one pair
  therefore never quarantines it: one bad pair of one is indistinguishable from a bad deploy.
* A quarantine **ends** when the tenant's configuration version changes (a new version is the
  usual fix; a tenant that had none gets one), or ``cool_off_seconds`` after it began; the
  pair's count then starts afresh, so a pair that is still bad is quarantined again after
  ``min_samples`` more rejections. Its end is a ``pair.released`` sync-log row and the gauge
  back at 0. Quarantines live in the process: a restart, or another replica owning the pair's
  partitions, starts counting afresh too. Nothing is lost meanwhile: every change of the pair
  is in the dead-letter topic, to be replayed once its cause is fixed.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

PairKey = tuple[str, str]
"""(tenant id, pair name or ``<side>:<object>``)."""


@dataclass(frozen=True)
class QuarantineLimit:
    max_invalid_ratio: float = 0.5
    window: int = 50
    # Well below the service-wide breaker's 100 invalid events in a row (DlqLimit), so that a
    # pair is quarantined before its poison alone halts the service.
    min_samples: int = 20
    cool_off_seconds: float = 900.0
    max_quarantined_share: float = 0.5
    # Pairs whose outcomes are kept (least recently seen forgotten first): garbage tenant ids or
    # object names must not grow the process's memory without bound.
    max_tracked: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_invalid_ratio <= 1.0 or not 0.0 <= self.max_quarantined_share <= 1.0:
            raise ValueError("ratios must be within [0, 1]")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError("min_samples must be within [1, window]")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be positive")


@dataclass(frozen=True)
class Quarantined:
    """One pair's quarantine, as it began."""

    tenant_id: str
    pair: str
    version: int | None  # the tenant's configuration version when it began
    since: float  # by the quarantine's clock
    rejected: int
    samples: int

    @property
    def reason(self) -> str:
        return (
            f"pair {self.pair!r} of tenant {self.tenant_id!r} is quarantined: "
            f"{self.rejected} of its last {self.samples} changes were rejected"
        )


@dataclass
class _Pair:
    version: int | None
    recent: deque[bool] = field(default_factory=deque)  # True = rejected
    quarantined: Quarantined | None = None


class Quarantines:
    """The recent outcomes of every pair seen, and the quarantines they led to."""

    def __init__(self, limit: QuarantineLimit | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit or QuarantineLimit()
        self._clock = clock
        self._pairs: OrderedDict[PairKey, _Pair] = OrderedDict()
        self._ended: list[Quarantined] = []

    def holding(self, key: PairKey, version: int | None) -> Quarantined | None:
        """The quarantine ``key``'s next change must be dead-lettered by, if any."""
        state = self._state(key, version)
        return state.quarantined if state is not None else None

    def record(self, key: PairKey, version: int | None, *, rejected: bool) -> Quarantined | None:
        """Book one change of ``key``; returns the quarantine it begins, if it begins one."""
        state = self._state(key, version)
        if state is None:
            state = self._pairs[key] = _Pair(version, deque(maxlen=self.limit.window))
            while len(self._pairs) > self.limit.max_tracked:
                # A forgotten quarantined pair is not lifted silently: it is reported as ended.
                self._end(next(iter(self._pairs)))
        if state.quarantined is not None:
            return None
        state.recent.append(rejected)
        bad, samples = sum(state.recent), len(state.recent)
        limit = self.limit
        if not rejected or samples < limit.min_samples or bad / samples <= limit.max_invalid_ratio:
            return None
        quarantined = sum(1 for p in self._pairs.values() if p.quarantined is not None) + 1
        if quarantined / len(self._pairs) > limit.max_quarantined_share:
            return None  # too many pairs are bad at once: that is the service-wide breaker's case
        key_tenant, key_pair = key
        state.quarantined = Quarantined(key_tenant, key_pair, version, self._clock(), bad, samples)
        return state.quarantined

    def take_ended(self) -> list[Quarantined]:
        """The quarantines that ended since the last call (cool-offs over are ended here)."""
        now = self._clock()
        for key, state in list(self._pairs.items()):
            q = state.quarantined
            if q is not None and now - q.since >= self.limit.cool_off_seconds:
                self._end(key)
        ended, self._ended = self._ended, []
        return ended

    def _state(self, key: PairKey, version: int | None) -> _Pair | None:
        """``key``'s state, forgotten first when its tenant's configuration changed or its cool-off is over."""
        state = self._pairs.get(key)
        if state is None:
            return None
        q = state.quarantined
        over = q is not None and self._clock() - q.since >= self.limit.cool_off_seconds
        if state.version != version or over:
            self._end(key)
            return None
        self._pairs.move_to_end(key)
        return state

    def _end(self, key: PairKey) -> None:
        state = self._pairs.pop(key)
        if state.quarantined is not None:
            self._ended.append(state.quarantined)

"""Per-org fault injection, deterministic for a given seed.

Admin endpoints set an org's :class:`OrgFaults`; the transport (latency, 503s, answers lost after
a write committed, token expiry),
the record store (lock errors), the API counter (lowered limit) and CDC (gaps, overflow, purge,
dropped streams) consult it. Decisions hash the seed with the subject and a per-org attempt
number, so one seed always gives the same faults in the same org, whatever other orgs do; setting
the seed (even to its current value) restarts the attempt numbers, which replays the sequence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def _fraction(seed: int, *parts: str) -> float:
    digest = hashlib.sha256("|".join((str(seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class OrgFaults:
    """What is currently wrong with one org. All off by default."""

    seed: int = 0
    latency_ms: int = 0
    # Share of REST calls answered 503 SERVER_UNAVAILABLE.
    unavailable_ratio: float = 0.0
    # Share of records whose writes fail with UNABLE_TO_LOCK_ROW.
    lock_ratio: float = 0.0
    # Share of successful write calls (POST, PATCH, PUT, DELETE) whose answer is lost after the
    # write committed: the client cannot tell it from a write that never happened.
    ambiguous_commit_ratio: float = 0.0
    # How the answer is lost: a 503 SERVER_UNAVAILABLE instead of it ("unavailable"), or the
    # connection closed after the status line ("disconnect").
    ambiguous_commit_mode: str = "unavailable"
    # This org's successful write calls so far (ambiguous commit decisions).
    commit_counter: int = 0
    # Each (call, record) pair is decided independently, so a retry can succeed.
    lock_attempt_counter: dict[str, int] = field(default_factory=dict)
    # This org's API calls so far (503 decisions), not shared with other orgs.
    call_counter: int = 0
    # Overrides the org's daily API limit when set.
    api_limit: int | None = None
    # Pub/Sub streams open before this many seconds of uptime are cut (incremented per drop).
    drop_streams_generation: int = 0

    def reseed(self, seed: int) -> None:
        """Set the seed and restart the attempt numbers, so the same seed replays the same faults."""
        self.seed = seed
        self.call_counter = 0
        self.commit_counter = 0
        self.lock_attempt_counter.clear()

    def next_call_unavailable(self) -> bool:
        """Whether this org's next API call gets a 503. Every call counts, faulted or not."""
        call = self.call_counter
        self.call_counter = call + 1
        return self.unavailable_ratio > 0 and _fraction(self.seed, "503", str(call)) < self.unavailable_ratio

    def next_commit_ambiguous(self) -> bool:
        """Whether the answer to this org's next successful write call is lost. Every one counts."""
        commit = self.commit_counter
        self.commit_counter = commit + 1
        ratio = self.ambiguous_commit_ratio
        return ratio > 0 and _fraction(self.seed, "commit", str(commit)) < ratio

    def lock_error(self, record_key: str) -> bool:
        """Whether this attempt to write ``record_key`` fails with UNABLE_TO_LOCK_ROW.

        Every attempt counts, so a record that failed once can succeed on a retry, as in Salesforce.
        """
        if self.lock_ratio <= 0:
            return False
        attempt = self.lock_attempt_counter.get(record_key, 0)
        self.lock_attempt_counter[record_key] = attempt + 1
        return _fraction(self.seed, "lock", record_key, str(attempt)) < self.lock_ratio

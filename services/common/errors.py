"""What can go wrong with one consumed event, by what must happen next.

Every failure of a handler falls in exactly one of these kinds (arroyo's taxonomy):

* :class:`InvalidEvent`: the event can never succeed (undecodable, breaks the contract, refused
  by a business rule). Retrying is pointless, so it goes to the source topic's dead-letter topic
  with its origin and reason, and the source offset is committed so the partition keeps moving.
* :class:`RetryableError`: the world is briefly unwell (timeout, 5xx, deadlock, broker not
  ready). The event is redelivered after a backoff, never skipped.
* Any other exception is a bug or an unknown condition. It is treated like a retryable error
  (redelivered, never skipped), because skipping is data loss and a DLQ entry would hide the bug.
* :class:`ConsumerHalted`: the consumer decided to stop instead of going on (the dead-letter
  circuit breaker tripped, or retries ran out). The offending event is not committed; the
  service exits non-zero so that the orchestrator surfaces it.
"""

from __future__ import annotations


class InvalidEvent(Exception):  # noqa: N818 (a fact about the event, as arroyo's InvalidMessage)
    """This event can never be processed; dead-letter it and move on.

    ``reason`` is short, stable and human-readable: it lands in the ``duplex-error-reason``
    header of the dead-letter record and in the sync log.

    ``contained``: the handler already counted this event against something narrower than the
    service (mapping's quarantine of one tenant's object pair), so the dead-letter circuit
    breaker does not count it. Without that, one tenant's bad input would halt every tenant.
    """

    def __init__(self, reason: str, *, contained: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.contained = contained


class RecordTooLargeError(Exception):
    """Event ``index`` of a batch to publish is over the producer's record size limit; nothing of
    the batch was sent, so the caller can refuse the input it came from and publish the rest."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class RetryableError(Exception):
    """A transient failure: process the same event again later."""


class ConsumerHalted(Exception):  # noqa: N818 (names the state the consumer ends in)
    """The consumer stopped on purpose and must not be restarted blindly.

    Raised when the dead-letter circuit breaker trips (most input is invalid: a bad deploy or a
    wrong producer) or when a retryable failure outlives its retry policy.
    """

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        super().__init__(reason if topic is None else f"{topic}: {reason}")
        self.reason = reason
        self.topic = topic

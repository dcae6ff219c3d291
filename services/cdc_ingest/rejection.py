"""What cdc-ingest cannot pass on, rejected for that one event or record. Pure: no I/O.

Bad input never stops the line. A change event whose schema or payload cannot be read, whatever
the exception, is an :class:`UndecodableError`: the stream dead-letters it and checkpoints past
it, instead of reconnecting from its checkpoint to meet it again for ever. A change too large for
a Kafka record is refused for that record only. Either way the tenant's sync log says why
(:class:`Rejection`), without the payload.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

# An error text is for a human to recognise the fault; a decoder's message may quote the input.
MAX_ERROR_CHARS = 300

UNDECODABLE = "undecodable"
TOO_LARGE = "too_large"


class UndecodableError(ValueError):
    """One event's schema text or payload bytes cannot be read.

    Raised only by pure code reading one event (:func:`reading`), so catching it never hides a
    transport failure: those still end the subscription and it resumes from the checkpoint.
    """

    def __init__(self, stage: str, error: Exception) -> None:
        self.stage = stage
        self.error_type = type(error).__name__
        self.error = str(error)[:MAX_ERROR_CHARS]
        super().__init__(f"{stage}: {self.error_type}: {self.error}")


@contextmanager
def reading(stage: str) -> Iterator[None]:
    """Turn any exception of the block into an :class:`UndecodableError` of ``stage``.

    Any: a decoder fed foreign bytes fails in ways no list foresees (an ``IndexError`` from a
    union branch out of range, a ``struct.error``, a ``RecursionError``...), and a kind left out
    loops the stream. Only pure code on one event's data may run inside.
    """
    try:
        yield
    except UndecodableError:
        raise
    except Exception as error:
        raise UndecodableError(stage, error) from error


@dataclass(frozen=True)
class Rejection:
    """One refused event or record: its sync-log row, its dead letter's origin headers, its metric."""

    event: str
    code: str
    message: str
    detail: Mapping[str, str | int]
    # duplex-original-<name> headers of the dead letter.
    origin: Mapping[str, str]
    reason: str
    record_id: str | None = None


def undecodable(error: UndecodableError, *, channel: str, replay_id: bytes, schema_id: str) -> Rejection:
    replay = replay_id.hex()
    return Rejection(
        event="cdc.undecodable",
        code="UNDECODABLE_EVENT",
        message=f"change event {replay} on {channel} (schema {schema_id}) cannot be decoded ({error}); "
        "it is on the dead-letter topic and the stream moved past it",
        detail={
            "channel": channel,
            "replay_id": replay,
            "schema_id": schema_id,
            "stage": error.stage,
            "error_type": error.error_type,
            "error": error.error,
        },
        origin={"channel": channel, "replay-id": replay, "schema-id": schema_id},
        reason=UNDECODABLE,
    )


def too_large(*, object_type: str, record_id: str, size: int, limit: int, position: Mapping[str, str]) -> Rejection:
    """A change of ``size`` bytes the producer refused, its limit being ``limit`` bytes.

    ``position``: where it was read (``channel`` and ``replay-id`` or ``cursor``).
    """
    return Rejection(
        event="cdc.record_too_large",
        code="RECORD_TOO_LARGE",
        message=f"{object_type} {record_id}: the change is {size} bytes, over Kafka's maximum request size of "
        f"{limit} bytes; not published (a pointer to it is on the dead-letter topic)",
        detail={"object": object_type, "record_id": record_id, "size": size, "limit": limit, **position},
        origin={"object": object_type, "record-id": record_id, "size": str(size), "limit": str(limit), **position},
        reason=TOO_LARGE,
        record_id=record_id,
    )

"""Making outcomes durable, then releasing the offsets of the commands they settle.

For every settled write, in this order (each step idempotent, so a retry after a failure
repeats the whole sequence harmlessly):

1. rejected writes go to the crm-writes dead-letter topic, as a one-record WriteRecords command
   (replayable after the fix) with the origin and Salesforce's code in the headers;
2. one WriteSettled per folded command goes to write-outcomes (keyed tenant/link);
3. the sync log gets a ``write.rejected`` row per rejected write (with Salesforce's statusCode),
   one aggregated ``write.succeeded`` row and one ``write.superseded`` row (the links and
   versions not sent) per batch, and in the same transaction each link's applied version is
   raised to its succeeded write's (:mod:`services.writer.versions`);
4. only then is each delivery's write reported settled to :class:`~services.writer.inflight.InFlight`,
   which is what lets the committer move the partition's committed offset past the command (or,
   for a parked command, deletes its row once its last write settled: :mod:`services.writer.parking`);
5. each command a succeeded write carried observes its end-to-end latency (origin commit to the
   write, ``stage="written"``), when the command has an origin commit time.

Every publish waits for ``acks=all``; the sync-log rows commit in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf.message import Message

from services.common import sync_log
from services.common.codec import link_key
from services.common.db import Pool
from services.common.dlq import dead_letter_headers
from services.common.errors import InvalidEvent
from services.common.metrics import Metrics
from services.writer.commands import Delivery
from services.writer.contract import dead_letter_command, write_settled
from services.writer.inflight import InFlight
from services.writer.payload import Outcome, WriteResult
from services.writer.repository import raise_applied, unpark
from services.writer.versions import highest

log = logging.getLogger(__name__)

SERVICE = "writer"
# The end_to_end_latency stage the writer finishes: the write to Salesforce succeeded.
STAGE_WRITTEN = "written"
ERROR_CODE_HEADER = "duplex-error-code"


# Dead letters are sent without waiting one by one, then awaited together.
_PUBLISH_CHUNK = 1000

# Publishes (event, key) pairs in order, returning once all are acknowledged (Sender.publish_all).
PublishAll = Callable[[Sequence[tuple[Message, bytes]]], Awaitable[None]]


class Publish(Protocol):
    def __call__(
        self, message: Any, topic: str, *, key: bytes | None, headers: dict[str, str] | None, no_confirm: bool
    ) -> Awaitable[Any]: ...


class WriteRejected(InvalidEvent):
    """Salesforce refused a record for a reason a retry cannot fix (the dead-letter reason)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Settlement:
    def __init__(
        self,
        *,
        publish: Publish,
        outcomes: PublishAll,
        dead_letter_topic: str,
        database: Pool,
        inflight: InFlight,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
    ) -> None:
        self._publish = publish
        self._outcomes = outcomes
        self._dead_letter_topic = dead_letter_topic
        self._database = database
        self._inflight = inflight
        self._clock = clock
        self._metrics = metrics

    async def settle(self, tenant_id: str, settled: list[tuple[WriteResult, int]]) -> None:
        now = self._clock()
        # One outcome per delivery folded into each write (coalesced commands included).
        outcomes = [
            (delivery, result, max(attempts, 1))
            for result, attempts in settled
            for delivery in self._inflight.deliveries_of(result.write)
        ]
        rejected = [result for result, _ in settled if result.outcome is Outcome.REJECTED]
        await self._send([self._dead_letter(result, now) for result in rejected])
        await self._outcomes(
            [
                (
                    write_settled(result, delivery, attempts=attempts, settled_at=now),
                    link_key(tenant_id, result.write.link_id),
                )
                for delivery, result, attempts in outcomes
            ]
        )
        await self._log(tenant_id, settled, now)
        done = [park_id for delivery, _, _ in outcomes if (park_id := self._inflight.settled(delivery)) is not None]
        await self._unpark(done)
        if self._metrics is not None:
            records = self._metrics.writer_records
            for outcome in (Outcome.SUCCEEDED, Outcome.REJECTED, Outcome.SUPERSEDED):
                records.labels(tenant_id, str(outcome)).inc(sum(1 for r, _ in settled if r.outcome is outcome))
            observe_written(self._metrics, tenant_id, [(d, r) for d, r, _ in outcomes], now)

    async def _unpark(self, park_ids: list[int]) -> None:
        if not park_ids:
            return
        try:
            async with self._database.acquire() as conn:
                await unpark(conn, park_ids)
        except Exception as exc:
            # The outcomes are durable: a row left behind is loaded again after a restart and
            # settled as superseded (or rejected again) without a call, never written twice.
            log.warning("parked commands not deleted", extra={"rows": len(park_ids), "reason": str(exc)})

    def _dead_letter(self, result: WriteResult, now: datetime) -> tuple[Any, str, bytes, dict[str, str]]:
        write = result.write
        # The latest command folded into the write stands for it: its values are the ones sent.
        delivery = self._inflight.latest_delivery(write)
        error = result.errors[0] if result.errors else None
        code = error.status_code if error else "UNKNOWN_EXCEPTION"
        headers = dead_letter_headers(
            original_headers=delivery.headers,
            topic=delivery.partition[0],
            partition=delivery.partition[1],
            offset=delivery.offset,
            timestamp_ms=delivery.timestamp_ms,
            error=WriteRejected(code, error.message if error else ""),
            service=SERVICE,
            failed_at=now,
        )
        headers[ERROR_CODE_HEADER] = code
        key = delivery.key or link_key(write.tenant_id, write.link_id)
        return dead_letter_command(result, delivery), self._dead_letter_topic, key, headers

    async def _send(self, messages: list[tuple[Any, str, bytes, dict[str, str]]]) -> None:
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            pending = [
                await self._publish(message, topic, key=key, headers=headers, no_confirm=True)
                for message, topic, key, headers in messages[start : start + _PUBLISH_CHUNK]
            ]
            await asyncio.gather(*pending)

    async def _log(self, tenant_id: str, settled: list[tuple[WriteResult, int]], now: datetime) -> None:
        rejected = [(r, a) for r, a in settled if r.outcome is Outcome.REJECTED]
        succeeded = [r for r, _ in settled if r.outcome is Outcome.SUCCEEDED]
        superseded = [r.write for r, _ in settled if r.outcome is Outcome.SUPERSEDED]
        async with self._database.acquire() as conn, conn.transaction():
            await raise_applied(conn, tenant_id, highest(r.write for r in succeeded))
            for result, attempts in rejected:
                write = result.write
                error = result.errors[0] if result.errors else None
                await sync_log.record(
                    conn,
                    tenant_id=tenant_id,
                    service=SERVICE,
                    event="write.rejected",
                    link_id=write.link_id,
                    record_id=result.record_id or write.record_id or None,
                    code=error.status_code if error else "UNKNOWN_EXCEPTION",
                    message=error.message if error else None,
                    detail={
                        "crm_object": write.crm_object,
                        "operation": str(write.operation),
                        "external_id_value": write.external_id_value,
                        "fields": list(error.fields) if error else [],
                        "errors": [e.status_code for e in result.errors],
                        "command_ids": [d.command_id for d in self._inflight.deliveries_of(write)],
                        "attempts": attempts,
                    },
                )
            if succeeded:
                # One row per batch, not per record: the log stays readable at 10,000 records a minute.
                objects = sorted({r.write.crm_object for r in succeeded})
                await sync_log.record(
                    conn,
                    tenant_id=tenant_id,
                    service=SERVICE,
                    event="write.succeeded",
                    message=f"{len(succeeded)} records written to {', '.join(objects)}",
                    detail={
                        "count": len(succeeded),
                        "created": sum(1 for r in succeeded if r.created),
                        "objects": objects,
                        **self._lag(succeeded, now),
                    },
                )
            if superseded:
                await sync_log.record(
                    conn,
                    tenant_id=tenant_id,
                    service=SERVICE,
                    event="write.superseded",
                    message=f"{len(superseded)} records not sent: their link's version was applied already",
                    detail={
                        "count": len(superseded),
                        "versions": {w.link_id: w.version for w in superseded},
                        "command_ids": [d.command_id for w in superseded for d in self._inflight.deliveries_of(w)],
                    },
                )

    def _lag(self, succeeded: Sequence[WriteResult], now: datetime) -> dict[str, int]:
        """``lag_ms``: the slowest record's origin commit → written, so the health and the console can
        show lag per tenant without a metrics stack."""
        origins = [
            d.origin_commit_time
            for r in succeeded
            for d in self._inflight.deliveries_of(r.write)
            if d.origin_commit_time is not None
        ]
        return {"lag_ms": max(0, int((now - min(origins)).total_seconds() * 1000))} if origins else {}


def observe_written(
    metrics: Metrics, tenant_id: str, outcomes: Sequence[tuple[Delivery, WriteResult]], written_at: datetime
) -> None:
    """Origin commit → written, once per command folded into each succeeded write."""
    latency = metrics.end_to_end_latency.labels(tenant=tenant_id, stage=STAGE_WRITTEN)
    for delivery, result in outcomes:
        if result.outcome is not Outcome.SUCCEEDED or delivery.origin_commit_time is None:
            continue
        latency.observe(max(0.0, (written_at - delivery.origin_commit_time).total_seconds()))

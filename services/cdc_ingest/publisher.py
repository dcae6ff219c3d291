"""One tenant's way onto crm-changes, shared by every part of its worker (stream, repairs, polls,
backfills): what it publishes is counted by source, and live changes set the tenant's lag.

What cannot go on (an undecodable event, a change too large for a Kafka record) is rejected here
for that one event or record: dead-lettered, written to the tenant's sync log and counted, so that
every part of the worker moves past it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from services.cdc_ingest.contract import RecordChanged
from services.cdc_ingest.handover import Snapshots
from services.cdc_ingest.rejection import Rejection, too_large
from services.cdc_ingest.sink import ChangeSink
from services.common.metrics import Metrics

# Lag is how far behind live changes we are; a backfill or repair reads old records on purpose
# (their commit time is the record's last edit), which would report days of lag.
_LIVE_SOURCES = frozenset({"stream", "poll"})


class SyncLog(Protocol):
    """The part of :class:`~services.cdc_ingest.store.Store` that writes the tenant's sync log."""

    async def log_event(
        self,
        tenant_id: str,
        event: str,
        *,
        message: str,
        record_id: str | None = None,
        code: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...


class Publisher:
    def __init__(
        self,
        tenant_id: str,
        sink: ChangeSink,
        sync_log: SyncLog,
        metrics: Metrics | None = None,
        *,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._sink = sink
        self._sync_log = sync_log
        self._metrics = metrics
        # Backfill snapshots once on crm-changes, for the stream to hand over from (services.cdc_ingest.handover).
        self._snapshots = snapshots

    async def publish(self, changes: Sequence[RecordChanged], source: str) -> None:
        """Return once every change is durably on crm-changes (or rejected); ``source`` labels the metrics."""
        if not changes:
            return
        refused = await self._sink.publish(changes)
        for change in refused:
            position = change.source_position
            where = {"channel": position.channel}
            where |= {"replay-id": position.replay_id.hex()} if position.replay_id else {"cursor": position.cursor}
            rejection = too_large(
                object_type=change.object_type,
                record_id=change.record_id,
                size=change.ByteSize(),
                limit=self._sink.max_request_size,
                position=where,
            )
            # A pointer, not the change: it is too large for the dead-letter topic as well.
            await self.reject(rejection, b"")
        sent = [c for c in changes if not any(c is r for r in refused)]
        if source == "backfill" and self._snapshots is not None:
            self._snapshots.remember(sent)
        if self._metrics is not None and sent:
            self._metrics.cdc_events_ingested.labels(tenant=self.tenant_id, source=source).inc(len(sent))
            if source in _LIVE_SOURCES:
                newest = max(c.origin_commit_time.ToDatetime(tzinfo=UTC) for c in sent)
                self._metrics.cdc_lag.labels(tenant=self.tenant_id).set((datetime.now(UTC) - newest).total_seconds())

    async def reject(self, rejection: Rejection, payload: bytes) -> None:
        """Refuse one event or record: dead-lettered with ``payload``, logged and counted."""
        await self._sink.dead_letter(
            payload, tenant_id=self.tenant_id, reason=rejection.message, origin=dict(rejection.origin)
        )
        await self._sync_log.log_event(
            self.tenant_id,
            rejection.event,
            message=rejection.message,
            record_id=rejection.record_id,
            code=rejection.code,
            detail=dict(rejection.detail),
        )
        if self._metrics is not None:
            self._metrics.cdc_events_rejected.labels(tenant=self.tenant_id, reason=rejection.reason).inc()

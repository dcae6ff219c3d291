"""One tenant's way onto crm-changes, shared by every part of its worker (stream, repairs, polls,
backfills): what it publishes is counted by source, and live changes set the tenant's lag."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from services.cdc_ingest.contract import RecordChanged
from services.cdc_ingest.sink import ChangeSink
from services.common.metrics import Metrics

# Lag is how far behind live changes we are; a backfill or repair reads old records on purpose
# (their commit time is the record's last edit), which would report days of lag.
_LIVE_SOURCES = frozenset({"stream", "poll"})


class Publisher:
    def __init__(self, tenant_id: str, sink: ChangeSink, metrics: Metrics | None = None) -> None:
        self.tenant_id = tenant_id
        self._sink = sink
        self._metrics = metrics

    async def publish(self, changes: Sequence[RecordChanged], source: str) -> None:
        """Return once every change is durably on crm-changes; ``source`` labels the metrics."""
        if not changes:
            return
        await self._sink.publish(changes)
        if self._metrics is not None:
            self._metrics.cdc_events_ingested.labels(tenant=self.tenant_id, source=source).inc(len(changes))
            if source in _LIVE_SOURCES:
                newest = max(c.origin_commit_time.ToDatetime(tzinfo=UTC) for c in changes)
                self._metrics.cdc_lag.labels(tenant=self.tenant_id).set((datetime.now(UTC) - newest).total_seconds())

    async def dead_letter(self, payload: bytes, *, reason: str, origin: dict[str, str]) -> None:
        """An event that cannot be turned into a change, kept with where it came from."""
        await self._sink.dead_letter(payload, tenant_id=self.tenant_id, reason=reason, origin=origin)

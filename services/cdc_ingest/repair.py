"""Re-reading what the CDC stream cannot deliver: GAP_\\* and GAP_OVERFLOW events, expired replay ids.

*GAP_\\** events: the named records are re-read by id (queryAll, so deletes show) before the
stream moves on, and the gap event's replay id is checkpointed only after the repair was
published. *GAP_OVERFLOW*: the entity is re-read from the overflow's commit time (less the
overlap) with the tuple cursor, likewise before moving on.

*Expired or invalid replay id*: every streamed object is read with the tuple cursor from the
checkpoint's commit time (less the overlap) up to now, deletes included (queryAll), and then the
stream subscribes **EARLIEST**, skipping events committed before the catch-up began (less the
overlap). The catch-up covers the purged events; everything still retained is replayed; the
overlap absorbs clock skew between Salesforce and us and transactions that commit late.
(Retention is 72 h; a catch-up would have to take longer than that for events to be purged
between its start and the EARLIEST subscription.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.cdc_ingest.cursor import Cursor
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.pubsub import ReplayIdInvalidError, Start
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.store import Store
from services.cdc_ingest.translate import GapOrder, OverflowOrder
from services.common.change import ChangeKind
from services.common.metrics import Metrics

if TYPE_CHECKING:
    # For annotations only: the stream imports this module to run its repairs.
    from services.cdc_ingest.stream import StreamState

_GAP_KIND = {"GAP_CREATE": ChangeKind.CREATE, "GAP_UNDELETE": ChangeKind.UNDELETE, "GAP_DELETE": ChangeKind.DELETE}


class Repairs:
    def __init__(
        self,
        *,
        tenant_id: str,
        channel: str,
        overlap: timedelta,
        rest: SalesforceRest,
        store: Store,
        reader: RecordReader,
        publisher: Publisher,
        objects: Objects,
        metrics: Metrics | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._channel = channel
        self._overlap = overlap
        self._rest = rest
        self._store = store
        self._reader = reader
        self._publisher = publisher
        self._objects = objects
        self._metrics = metrics

    async def repair(self, order: GapOrder | OverflowOrder) -> None:
        if isinstance(order, GapOrder):
            kind, what = "gap", f"{order.change_type} for {len(order.record_ids)} record(s)"
        else:
            kind, what = "overflow", f"{order.reason} on {order.entity}"
        detail: dict[str, Any] = {
            "entity": order.entity,
            "replay_id": order.replay_id.hex(),
            "commit_time": order.commit_time.isoformat(),
            **({"record_ids": list(order.record_ids)} if isinstance(order, GapOrder) else {}),
        }
        # Logged before the repair, so that one that fails (and is retried from the checkpoint)
        # still leaves a trace of what was missed.
        await self._store.log_event(
            self.tenant_id,
            f"cdc.{kind}.detected",
            message=f"{what}: re-reading",
            code=kind.upper(),
            detail=detail,
        )
        if isinstance(order, GapOrder):
            count = await self._refetch(order)
        else:
            count = await self._reader.read_window(
                order.entity,
                Cursor(order.commit_time).minus(self._overlap),
                "overflow",
                missing_since=order.commit_time,
            )
        await self._store.log_event(
            self.tenant_id,
            f"cdc.{kind}.repaired",
            message=f"{what} repaired by re-reading: {count} change(s) published",
            code=kind.upper(),
            detail=detail | {"published": count},
        )
        if self._metrics is not None:
            self._metrics.cdc_gaps_repaired.labels(tenant=self.tenant_id, kind=kind).inc()

    async def _refetch(self, order: GapOrder) -> int:
        """Re-read the gap's records by id; publish their current state (or their deletion)."""
        return await self._reader.read_ids(
            order.entity,
            order.record_ids,
            "gap",
            kind=_GAP_KIND.get(order.change_type, ChangeKind.SNAPSHOT),
            stamp=order.commit_time,
            tag=f"gap:{order.replay_id.hex()}",
        )

    async def catch_up_expired(self, state: StreamState, error: ReplayIdInvalidError) -> None:
        """Read what the purged events held, then point ``state`` at EARLIEST past the read."""
        checkpoint = await self._store.checkpoint(self.tenant_id, self._channel)
        began = datetime.now(UTC)
        since = (checkpoint.commit_time or checkpoint.updated_at) if checkpoint else None
        await self._store.log_event(
            self.tenant_id,
            "cdc.replay.expired",
            message=f"replay id refused ({error.code or error.status}); catching up by polling",
            code=error.code or error.status,
            detail={"since": since.isoformat() if since else None},
        )
        published = 0
        start = Cursor(since).minus(self._overlap) if since else None
        streamed = self._objects.streamed
        for entity in streamed:
            published += await self._reader.read_window(entity, start, "catch_up", missing_since=since)
        state.start = Start.earliest()
        state.skip_before = began - self._overlap
        await self._store.log_event(
            self.tenant_id,
            "cdc.replay.repaired",
            message=f"caught up {len(streamed)} object(s) by polling: {published} change(s) published;"
            " resuming the stream from EARLIEST",
            code="REPLAY_EXPIRED",
            detail={"since": since.isoformat() if since else None, "published": published, "objects": streamed},
        )
        if self._metrics is not None:
            self._metrics.cdc_gaps_repaired.labels(tenant=self.tenant_id, kind="replay_expired").inc()

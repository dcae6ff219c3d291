"""One tenant's ingestion: backfill, the CDC stream, catch-up, and polling. The orchestration only;
decisions live in the pure modules (translate, cursor, typed, bitmap).

Order of work and the hand-overs (the part that must neither drop nor invent changes)
=====================================================================================
*First connection* (no replay checkpoint): every configured object is backfilled (REST or Bulk
2.0, resumable), then the stream subscribes **EARLIEST** and skips events committed before the
backfill began (less the overlap), because the snapshots already reflect them; everything from
then on is replayed. Nothing between "backfill read the record" and "stream started" can be lost:
those events are all still retained and replayed.

*Steady state*: each FetchResponse is handled in order; its changes are published and
acknowledged (acks=all) before its replay id is checkpointed; a restart resumes CUSTOM after the
checkpoint, so a crash re-publishes at most the last batch (same event ids).

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

*Objects the org does not select for CDC*: Salesforce sends nothing for them and reports no
error, so at start a tenant that streams reads the standard channel's selection once (Tooling API,
PlatformEventChannelMember; see :mod:`services.cdc_ingest.selection`) through the governed client.
Every object configured for streaming whose change event is not selected is served as a polled
object from then on (same cursors, same backfill), and ``cdc.not_enabled`` is logged for it, once
per start. When the selection cannot be read (the integration user lacks View Setup and
Configuration), the configuration stands and one warning is logged. The selection is read at start
only: an object selected while the tenant runs stays polled until the next start, and the stream
checkpoints past its events meanwhile, so changes after its last poll before that start are not
read again; requesting a backfill of the object (services.common.backfills) covers them. One
deselected while the tenant runs is silent until the next start, whose first poll reads it from its
backfill's start: re-read, not lost (an object never backfilled is polled from that start on).

*Polled objects* (CDC off for the object or the tenant): read every interval with the tuple
cursor from the saved cursor less the overlap; the cursor is saved after each page is
acknowledged. After a backfill the first poll starts from the backfill's start (less the overlap);
without one, from the first run's start, saved before anything is read.

*Merges*: a merge deletes the losers with MasterRecordId set to the winner, but a CDC DELETE
event carries no fields; the stream looks the deleted records of mergeable objects up in the
recycle bin (queryAll) and carries MasterRecordId on the DELETE. Re-reads (gaps, catch-up,
polls) already read deleted rows with queryAll, MasterRecordId among their fields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from duplex.change.v1 import record_changed_pb2
from eventbus.v1 import pubsub_api_pb2 as pb

from services.cdc_ingest.bitmap import BitmapError
from services.cdc_ingest.cursor import (
    Cursor,
    RecentlyEmitted,
    by_ids_query,
    merge_losers_query,
    read_after_query,
    selectable_fields,
)
from services.cdc_ingest.describe import MASTER_RECORD_ID
from services.cdc_ingest.event_schema import ChangeEventSchema, flat_name
from services.cdc_ingest.pubsub import (
    PubSubAuthError,
    PubSubClient,
    PubSubError,
    ReplayIdInvalidError,
    Start,
)
from services.cdc_ingest.rest import BulkJobGoneError, SalesforceRest
from services.cdc_ingest.selection import (
    SELECTED_ENTITIES_QUERY,
    change_event_name,
    checks_selection,
    selection_refused,
    serving,
)
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import ChangeSink
from services.cdc_ingest.store import Backfill, LeaseLostError, Store
from services.cdc_ingest.translate import (
    GapOrder,
    OverflowOrder,
    Translated,
    read_change,
    set_master_records,
    translate_event,
)
from services.cdc_ingest.typed import FieldTypes, datetime_from_ms, typed, typed_from_csv
from services.common.change import ChangeKind
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy
from services.common.salesforce import SalesforceApiError
from services.common.tenant_config import TenantConfig

log = logging.getLogger(__name__)

_GAP_KIND = {"GAP_CREATE": ChangeKind.CREATE, "GAP_UNDELETE": ChangeKind.UNDELETE, "GAP_DELETE": ChangeKind.DELETE}
_IDS_PER_QUERY = 200
_NOT_VALUES = frozenset({"attributes", "Id", "IsDeleted"})
# Lag is how far behind live changes we are; a backfill or repair reads old records on purpose
# (their commit time is the record's last edit), which would report days of lag.
_LIVE_SOURCES = frozenset({"stream", "poll"})


def _now() -> datetime:
    return datetime.now(UTC)


def _begun(state: Backfill) -> bool:
    """Whether a backfill has read anything (a job created, a page published)."""
    return state.job_id is not None or state.cursor is not None or state.emitted > 0


@dataclass
class StreamState:
    """Where the stream is: the start of the next subscription and what to skip."""

    start: Start
    # Events committed before this are already covered by a backfill or catch-up read.
    skip_before: datetime | None = None


class TenantWorker:
    """Everything one tenant needs, for as long as this replica holds its lease."""

    def __init__(
        self,
        *,
        tenant_id: str,
        config: TenantConfig,
        settings: CdcIngestSettings,
        rest: SalesforceRest,
        pubsub_factory: Callable[[str], Awaitable[PubSubClient]],
        store: Store,
        sink: ChangeSink,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tenant_id = tenant_id
        self.config = config
        self.settings = settings
        self.rest = rest
        self._pubsub_factory = pubsub_factory
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self._sleep = sleep
        self._reconnect = RetryPolicy(
            base_delay=settings.reconnect_base_delay_seconds,
            max_delay=settings.reconnect_max_delay_seconds,
            max_attempts=None,
        )
        self._overlap = settings.poll_overlap
        self._checked_schemas: set[str] = set()
        objects = [pair.salesforce.object for pair in config.spec.objects]
        cdc = config.spec.sync.cdc
        self.polled = [o for o in objects if not cdc or settings.polls(tenant_id, o)]
        self.streamed = [o for o in objects if o not in self.polled]
        self._running_backfills: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the tenant until cancelled or the lease is lost (LeaseLostError)."""
        await self.poll_what_cdc_does_not_send()
        for entity in [*self.streamed, *self.polled]:
            # Mapping reads every synced object's describe from Postgres (written on each
            # describe), and a restart is when field changes made in Setup are picked up.
            await self.rest.fields(entity, refresh=True)
        checkpoint = await self.store.checkpoint(self.tenant_id, self.settings.channel)
        if checkpoint is not None:
            state = StreamState(Start.after(checkpoint.replay_id))
        elif self.settings.backfill_on_first_connect:
            started = await self.backfill_all()
            state = StreamState(Start.earliest(), started - self._overlap)
        else:
            state = StreamState(Start.latest())
        async with asyncio.TaskGroup() as group:
            if self.streamed:
                group.create_task(self.stream(state), name=f"stream-{self.tenant_id}")
            for entity in self.polled:
                group.create_task(self.poll_forever(entity), name=f"poll-{self.tenant_id}-{entity}")
            group.create_task(self.backfills_on_demand(), name=f"backfills-{self.tenant_id}")

    async def poll_what_cdc_does_not_send(self) -> None:
        """Move streamed objects whose change events the org does not select to polling (see the module docstring)."""
        if not self.streamed or not checks_selection(self.settings.channel):
            return
        try:
            selected = [str(row["SelectedEntity"]) async for row in self.rest.tooling_query(SELECTED_ENTITIES_QUERY)]
        except SalesforceApiError as error:
            if not selection_refused(error.http_status, error.error_code):
                raise
            log.warning(
                "cannot read the org's CDC selection; every object configured for streaming is streamed",
                extra={"tenant_id": self.tenant_id, "err": str(error)},
            )
            return
        decided = serving(self.streamed, self.polled, selected)
        self.streamed, self.polled = list(decided.streamed), list(decided.polled)
        for entity in decided.not_enabled:
            event = change_event_name(entity)
            await self.store.log_event(
                self.tenant_id,
                "cdc.not_enabled",
                message=f"{entity} is not selected for Change Data Capture in the org ({event} is not on the"
                f" ChangeEvents channel); polling it every {self.config.spec.sync.poll_interval_seconds} s instead",
                code="CDC_NOT_ENABLED",
                detail={"entity": entity, "change_event": event, "channel": self.settings.channel},
            )

    # --- publishing -----------------------------------------------------------------------------

    async def _publish(self, changes: Sequence[record_changed_pb2.RecordChanged], source: str) -> None:
        if not changes:
            return
        await self.sink.publish(changes)
        if self.metrics is not None:
            self.metrics.cdc_events_ingested.labels(tenant=self.tenant_id, source=source).inc(len(changes))
            if source in _LIVE_SOURCES:
                newest = max(c.origin_commit_time.ToDatetime(tzinfo=UTC) for c in changes)
                self.metrics.cdc_lag.labels(tenant=self.tenant_id).set((_now() - newest).total_seconds())

    # --- the stream ------------------------------------------------------------------------------

    async def stream(self, state: StreamState) -> None:
        """Subscribe, handle, checkpoint; reconnect with capped, jittered backoff; never returns."""
        org_id = await self.rest.org_id()
        pubsub = await self._pubsub_factory(org_id)
        failures = 0
        while True:
            try:
                async for response in pubsub.subscribe(
                    self.settings.channel,
                    state.start,
                    batch=self.settings.fetch_batch,
                    idle_timeout=self.settings.stream_idle_timeout_seconds,
                ):
                    failures = 0
                    await self._handle(pubsub, response, state)
            except ReplayIdInvalidError as error:
                if self.metrics is not None:
                    self.metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason="replay_expired").inc()
                await self._catch_up_expired(state, error)
                continue
            except PubSubAuthError as error:
                reason = "auth"
                log.info(
                    "pubsub auth refused, logging in again", extra={"tenant_id": self.tenant_id, "err": str(error)}
                )
                await pubsub.reauthenticate()
            except PubSubError as error:
                reason = "unavailable"
                log.warning("pubsub stream failed", extra={"tenant_id": self.tenant_id, "err": str(error)})
            except (LeaseLostError, asyncio.CancelledError):
                raise
            except Exception:
                # A failed REST call inside a repair, Kafka unavailable, ...: start again from the
                # last checkpoint after a pause rather than skip anything.
                reason = "error"
                log.exception("stream handling failed", extra={"tenant_id": self.tenant_id})
            failures += 1
            if self.metrics is not None:
                self.metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason=reason).inc()
            await self._sleep(self._reconnect.delay(failures))

    async def _handle(self, pubsub: PubSubClient, response: pb.FetchResponse, state: StreamState) -> None:
        pending: list[record_changed_pb2.RecordChanged] = []
        last_replay: bytes | None = None
        last_commit: datetime | None = None
        for consumer_event in response.events:
            replay_id = bytes(consumer_event.replay_id)
            translated = await self._translate(pubsub, consumer_event, replay_id)
            if translated is not None and translated.entity in self.streamed:
                skip = state.skip_before is not None and translated.commit_time < state.skip_before
                if translated.order is not None and not skip:
                    # Everything before the gap goes out first, so per-record order holds.
                    await self._add_masters(pending)
                    await self._publish(pending, "stream")
                    pending = []
                    await self._repair(translated.order)
                elif not skip:
                    pending.extend(translated.changes)
                last_commit = translated.commit_time
            last_replay = replay_id
        await self._add_masters(pending)
        await self._publish(pending, "stream")
        if last_replay is None and response.latest_replay_id:
            # A keepalive: nothing on this channel up to latest_replay_id, so resuming after it
            # skips nothing and saves replaying a long quiet stretch.
            last_replay = bytes(response.latest_replay_id)
        if last_replay is not None:
            await self.store.save_checkpoint(self.tenant_id, self.settings.channel, last_replay, last_commit)
            state.start = Start.after(last_replay)

    async def _translate(
        self, pubsub: PubSubClient, consumer_event: pb.ConsumerEvent, replay_id: bytes
    ) -> Translated | None:
        event = consumer_event.event
        try:
            schema = await pubsub.schema(event.schema_id)
            record = schema.decode(event.payload)
            entity = str(record["ChangeEventHeader"]["entityName"])
            if entity not in self.streamed:
                # An object this tenant does not sync: checkpointed past, never published.
                return Translated(entity, datetime_from_ms(int(record["ChangeEventHeader"]["commitTimestamp"])))
            types = await self._types(entity, schema)
            return translate_event(
                tenant_id=self.tenant_id,
                channel=self.settings.channel,
                replay_id=replay_id,
                schema=schema,
                record=record,
                field_types=types,
            )
        except (ValueError, KeyError, TypeError, EOFError, BitmapError) as error:
            # Bad input never stops the line: the event is kept on the DLQ and logged.
            reason = f"undecodable change event: {error!r}"
            await self.sink.dead_letter(
                event.payload,
                tenant_id=self.tenant_id,
                reason=reason,
                origin={"channel": self.settings.channel, "replay-id": replay_id.hex(), "schema-id": event.schema_id},
            )
            await self.store.log_event(
                self.tenant_id,
                "cdc.event.rejected",
                message=reason,
                code="UNDECODABLE",
                detail={"replay_id": replay_id.hex()},
            )
            return None

    async def _types(self, entity: str, schema: ChangeEventSchema) -> FieldTypes:
        types = await self.rest.fields(entity)
        if schema.schema_id not in self._checked_schemas:
            # A new schema may carry fields added since describe was cached.
            names = [flat_name(f.name, c) for f in schema.fields[1:] for c in f.children] + [
                f.name for f in schema.fields[1:] if not f.is_compound
            ]
            if any(name not in types for name in names):
                types = await self.rest.fields(entity, refresh=True)
            self._checked_schemas.add(schema.schema_id)
        return types

    # --- merges ---------------------------------------------------------------------------------

    async def _add_masters(self, changes: Sequence[record_changed_pb2.RecordChanged]) -> None:
        """Set MasterRecordId on the DELETE changes of merge losers.

        A CDC DELETE event carries no field values, so the only trace of a merge (the loser's
        MasterRecordId, which mapping needs to re-point the app's record) is in the recycle bin:
        one queryAll per object and batch of deleted ids.
        """
        deleted: dict[str, list[str]] = {}
        for change in changes:
            if change.kind == record_changed_pb2.CHANGE_KIND_DELETE and MASTER_RECORD_ID not in change.fields:
                deleted.setdefault(change.object_type, []).append(change.record_id)
        masters: dict[tuple[str, str], str] = {}
        for entity, record_ids in deleted.items():
            if not await self.rest.mergeable(entity):
                continue
            wanted = list(dict.fromkeys(record_ids))
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                query = merge_losers_query(entity, wanted[start : start + _IDS_PER_QUERY])
                async for row in self.rest.query(query, all_rows=True):
                    if row.get(MASTER_RECORD_ID):
                        masters[(entity, str(row["Id"]))] = str(row[MASTER_RECORD_ID])
        set_master_records(changes, masters)

    # --- repairs --------------------------------------------------------------------------------

    async def _repair(self, order: GapOrder | OverflowOrder) -> None:
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
        await self.store.log_event(
            self.tenant_id,
            f"cdc.{kind}.detected",
            message=f"{what}: re-reading",
            code=kind.upper(),
            detail=detail,
        )
        if isinstance(order, GapOrder):
            count = await self._refetch(order)
        else:
            count = await self.read_window(
                order.entity,
                Cursor(order.commit_time).minus(self._overlap),
                "overflow",
                missing_since=order.commit_time,
            )
        await self.store.log_event(
            self.tenant_id,
            f"cdc.{kind}.repaired",
            message=f"{what} repaired by re-reading: {count} change(s) published",
            code=kind.upper(),
            detail=detail | {"published": count},
        )
        if self.metrics is not None:
            self.metrics.cdc_gaps_repaired.labels(tenant=self.tenant_id, kind=kind).inc()

    async def _refetch(self, order: GapOrder) -> int:
        """Re-read the gap's records by id; publish their current state (or their deletion)."""
        fields = await self._select(order.entity)
        types = await self.rest.fields(order.entity)
        published = 0
        wanted = list(dict.fromkeys(order.record_ids))
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]
            found: dict[str, dict[str, Any]] = {}
            async for row in self.rest.query(by_ids_query(order.entity, fields, chunk), all_rows=True):
                found[str(row["Id"])] = row
            changes = []
            for record_id in chunk:
                found_row = found.get(record_id)
                if found_row is None:
                    # Gone even from the recycle bin: all that is left to say is that it was deleted.
                    changes.append(
                        self._deleted(order.entity, record_id, order.commit_time, f"gap:{order.replay_id.hex()}")
                    )
                    continue
                kind = _GAP_KIND.get(order.change_type, ChangeKind.SNAPSHOT)
                changes.append(self._row_change(order.entity, found_row, types, kind, "gap", order.commit_time))
            await self._publish(changes, "gap")
            published += len(changes)
        return published

    async def _catch_up_expired(self, state: StreamState, error: ReplayIdInvalidError) -> None:
        checkpoint = await self.store.checkpoint(self.tenant_id, self.settings.channel)
        began = _now()
        since = (checkpoint.commit_time or checkpoint.updated_at) if checkpoint else None
        await self.store.log_event(
            self.tenant_id,
            "cdc.replay.expired",
            message=f"replay id refused ({error.code or error.status}); catching up by polling",
            code=error.code or error.status,
            detail={"since": since.isoformat() if since else None},
        )
        published = 0
        start = Cursor(since).minus(self._overlap) if since else None
        for entity in self.streamed:
            published += await self.read_window(entity, start, "catch_up", missing_since=since)
        state.start = Start.earliest()
        state.skip_before = began - self._overlap
        await self.store.log_event(
            self.tenant_id,
            "cdc.replay.repaired",
            message=f"caught up {len(self.streamed)} object(s) by polling: {published} change(s) published;"
            " resuming the stream from EARLIEST",
            code="REPLAY_EXPIRED",
            detail={"since": since.isoformat() if since else None, "published": published, "objects": self.streamed},
        )
        if self.metrics is not None:
            self.metrics.cdc_gaps_repaired.labels(tenant=self.tenant_id, kind="replay_expired").inc()

    # --- reading records -------------------------------------------------------------------------

    async def _select(self, entity: str) -> list[str]:
        return selectable_fields((await self.rest.fields(entity)).values())

    def _row_values(self, row: dict[str, Any], types: FieldTypes) -> dict[str, Any]:
        return {
            name: typed(types[name].type if name in types else None, value)
            for name, value in row.items()
            if name not in _NOT_VALUES
        }

    def _row_change(
        self,
        entity: str,
        row: dict[str, Any],
        types: FieldTypes,
        kind: ChangeKind,
        channel: str,
        missing_since: datetime | None = None,
    ) -> record_changed_pb2.RecordChanged:
        modstamp = typed("datetime", row["SystemModstamp"])
        assert isinstance(modstamp, datetime)
        record_id = str(row["Id"])
        if row.get("IsDeleted") in (True, "true"):
            kind = ChangeKind.DELETE
        return read_change(
            tenant_id=self.tenant_id,
            entity=entity,
            record_id=record_id,
            values=self._row_values(row, types),
            modstamp=modstamp,
            kind=kind,
            cursor=Cursor(modstamp, record_id).encode(),
            channel=f"{channel}:{entity}",
            missing_since=missing_since,
        )

    def _deleted(self, entity: str, record_id: str, at: datetime, cursor: str) -> record_changed_pb2.RecordChanged:
        return read_change(
            tenant_id=self.tenant_id,
            entity=entity,
            record_id=record_id,
            values={},
            modstamp=at,
            kind=ChangeKind.DELETE,
            cursor=cursor,
            channel=f"gap:{entity}",
        )

    async def read_window(
        self,
        entity: str,
        start: Cursor | None,
        source: str,
        *,
        save: Callable[[Cursor, int], Awaitable[None]] | None = None,
        recent: RecentlyEmitted | None = None,
        all_rows: bool = True,
        backfill: bool = False,
        missing_since: datetime | None = None,
    ) -> int:
        """Publish every record after ``start`` in (SystemModstamp, Id) order, page by page.

        ``save`` is called with the cursor and the count published so far after each page is
        acknowledged; ``missing_since`` dates the records read (see ``read_change``). Returns the
        number of changes published.
        """
        fields = await self._select(entity)
        types = await self.rest.fields(entity)
        cursor = start
        published = 0
        while True:
            soql = read_after_query(entity, fields, cursor, self.settings.poll_page_size)
            rows = [row async for row in self.rest.query(soql, all_rows=all_rows, backfill=backfill)]
            changes = []
            for row in rows:
                change = self._row_change(entity, row, types, ChangeKind.SNAPSHOT, source, missing_since)
                stamp = change.origin_commit_time.ToDatetime(tzinfo=UTC)
                if recent is None or recent.is_new(change.record_id, stamp):
                    changes.append(change)
                if recent is not None:
                    recent.add(change.record_id, stamp)
            await self._publish(changes, source)
            published += len(changes)
            if rows:
                last = rows[-1]
                last_stamp = typed("datetime", last["SystemModstamp"])
                assert isinstance(last_stamp, datetime)
                cursor = Cursor(last_stamp, str(last["Id"]))
                if save is not None:
                    await save(cursor, published)
            if len(rows) < self.settings.poll_page_size:
                return published

    # --- polling mode -------------------------------------------------------------------------------

    async def poll_forever(self, entity: str) -> None:
        recent = RecentlyEmitted(self._overlap)
        failures = 0
        while True:
            try:
                await self.poll_once(entity, recent)
                failures = 0
                await self._sleep(self.config.spec.sync.poll_interval_seconds)
            except (LeaseLostError, asyncio.CancelledError):
                raise
            except Exception:
                failures += 1
                log.exception("poll failed", extra={"tenant_id": self.tenant_id, "entity": entity})
                await self._sleep(self._reconnect.delay(failures))

    async def poll_once(self, entity: str, recent: RecentlyEmitted | None = None) -> int:
        saved = await self.store.poll_cursor(self.tenant_id, entity)
        if saved is None:
            backfill = await self.store.backfill(self.tenant_id, entity)
            saved = Cursor(backfill.started_at) if backfill else Cursor(_now())
            # Saved before the first read: a run that publishes nothing saves no page cursor,
            # and the next run would start from its own now(), skipping what changed in between.
            await self.store.save_poll_cursor(self.tenant_id, entity, saved)
        if recent is not None:
            recent.forget_before(saved)

        async def save(cursor: Cursor, _published: int) -> None:
            await self.store.save_poll_cursor(self.tenant_id, entity, cursor)

        return await self.read_window(entity, saved.minus(self._overlap), "poll", save=save, recent=recent)

    # --- backfill ----------------------------------------------------------------------------------

    async def backfill_all(self) -> datetime:
        """Backfill every configured object not yet done; the earliest start among them."""
        starts = [await self.backfill(entity) for entity in [*self.streamed, *self.polled]]
        return min(starts, default=_now())

    async def backfills_on_demand(self) -> None:
        """Run backfills requested while the tenant is served (status 'running', not ours yet)."""
        while True:
            await self._sleep(self.settings.lease_renew_seconds)
            for entity in [*self.streamed, *self.polled]:
                if entity in self._running_backfills:
                    continue
                state = await self.store.backfill(self.tenant_id, entity)
                if state is not None and state.status == "running":
                    await self.backfill(entity)

    async def backfill(self, entity: str) -> datetime:
        """Snapshot every record of ``entity`` (resuming an interrupted run); its start time."""
        self._running_backfills.add(entity)
        try:
            state = await self.store.backfill(self.tenant_id, entity)
            if state is None or (state.status == "running" and not _begun(state)):
                # A requested backfill (services.common.backfills) arrives without a count, and
                # the count may have crossed the threshold since the last one: choose here, while
                # nothing has been read and switching method costs nothing.
                count = await self.rest.count(entity)
                method = "bulk" if count > self.settings.bulk_threshold else "rest"
                if state is None:
                    await self.store.start_backfill(self.tenant_id, entity, method)
                elif state.method != method:
                    await self.store.choose_backfill_method(self.tenant_id, entity, method)
                await self.store.log_event(
                    self.tenant_id,
                    "cdc.backfill.started",
                    message=f"backfill of {entity} ({count} records) by {method}",
                    detail={"entity": entity, "records": count, "method": method},
                )
                state = await self.store.backfill(self.tenant_id, entity)
            assert state is not None
            if state.status == "done":
                return state.started_at
            if state.method == "bulk":
                emitted = await self._bulk_backfill(entity, state.job_id, state.locator, state.emitted)
            else:
                emitted = await self._rest_backfill(entity, state.cursor, state.emitted)
            await self.store.finish_backfill(self.tenant_id, entity)
            await self.store.log_event(
                self.tenant_id,
                "cdc.backfill.completed",
                message=f"backfill of {entity} done: {emitted} snapshot(s) published",
                detail={"entity": entity, "published": emitted, "method": state.method},
            )
            return state.started_at
        finally:
            self._running_backfills.discard(entity)

    async def _rest_backfill(self, entity: str, cursor: Cursor | None, emitted: int) -> int:
        async def save(at: Cursor, published: int) -> None:
            await self.store.backfill_progress(
                self.tenant_id, entity, job_id=None, locator=None, cursor=at, emitted=emitted + published
            )

        published = await self.read_window(entity, cursor, "backfill", save=save, all_rows=False, backfill=True)
        return emitted + published

    async def _bulk_backfill(self, entity: str, job_id: str | None, locator: str | None, emitted: int) -> int:
        """Read ``entity`` with a Bulk 2.0 query job, resuming at the job's locator.

        The query has no ORDER BY: Bulk API 2.0 does not support it, and using it turns off the
        automatic PK chunking, so a large object's query runs long and may time out (Salesforce's
        Bulk API 2.0 "SOQL considerations" and "Troubleshooting query timeouts"). Without an
        order there is no "after the last record emitted", so a resume goes by the job's own
        locator; a job that is gone (deleted 7 days after it completed) is replaced by a new
        one over the whole object, re-publishing snapshots whose event ids stay the same for an
        unchanged record.
        """
        fields = await self._select(entity)
        types = await self.rest.fields(entity)
        while True:
            if job_id is None:
                job_id, locator = await self.rest.create_query_job(f"SELECT {', '.join(fields)} FROM {entity}"), None
                await self.store.backfill_progress(
                    self.tenant_id, entity, job_id=job_id, locator=None, cursor=None, emitted=emitted
                )
            try:
                await self.rest.wait_for_job(job_id, self.settings.bulk_poll_seconds)
                while True:
                    page = await self.rest.job_page(job_id, locator, self.settings.bulk_page_size)
                    changes = [self._csv_change(entity, row, types) for row in page.rows]
                    await self._publish(changes, "backfill")
                    emitted += len(changes)
                    locator = page.next_locator
                    await self.store.backfill_progress(
                        self.tenant_id, entity, job_id=job_id, locator=locator, cursor=None, emitted=emitted
                    )
                    if locator is None:
                        return emitted
            except BulkJobGoneError:
                log.warning(
                    "bulk job gone, reading the object again with a new one",
                    extra={"tenant_id": self.tenant_id, "job": job_id},
                )
                job_id = None

    def _csv_change(self, entity: str, row: dict[str, str], types: FieldTypes) -> record_changed_pb2.RecordChanged:
        values = {
            name: typed_from_csv(types[name].type if name in types else None, text)
            for name, text in row.items()
            if name not in _NOT_VALUES
        }
        modstamp = values.get("SystemModstamp")
        assert isinstance(modstamp, datetime), f"{entity} {row.get('Id')}: no SystemModstamp"
        record_id = row["Id"]
        return read_change(
            tenant_id=self.tenant_id,
            entity=entity,
            record_id=record_id,
            values=values,
            modstamp=modstamp,
            kind=ChangeKind.SNAPSHOT,
            cursor=Cursor(modstamp, record_id).encode(),
            channel=f"backfill:{entity}",
        )

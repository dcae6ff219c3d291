"""One tenant's CDC stream: subscribe, handle each FetchResponse in order, checkpoint, reconnect.

Each FetchResponse's changes are published and acknowledged (acks=all) before its replay id is
checkpointed; a restart resumes CUSTOM after the checkpoint, so a crash re-publishes at most the
last batch (same event ids). A GAP_\\* or GAP_OVERFLOW event is repaired (see
:mod:`services.cdc_ingest.repair`) before the stream moves on, everything before it published
first; an expired or invalid replay id is caught up by polling, then the stream resumes EARLIEST.

*Merges*: a merge deletes the losers with MasterRecordId set to the winner, but a CDC DELETE
event carries no fields; the stream looks the deleted records of mergeable objects up in the
recycle bin (queryAll) and carries MasterRecordId on the DELETE. Re-reads (gaps, catch-up,
polls) already read deleted rows with queryAll, MasterRecordId among their fields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.cdc_ingest.contract import ConsumerEvent, FetchResponse, RecordChanged, is_deletion
from services.cdc_ingest.cursor import IDS_PER_QUERY, merge_losers_query
from services.cdc_ingest.describe import MASTER_RECORD_ID
from services.cdc_ingest.event_schema import ChangeEventSchema, flat_name
from services.cdc_ingest.filters import UpdateCompleter
from services.cdc_ingest.handover import Snapshots
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.pubsub import PubSubAuthError, PubSubClient, PubSubError, ReplayIdInvalidError, Start
from services.cdc_ingest.rejection import UndecodableError, undecodable
from services.cdc_ingest.repair import Repairs
from services.cdc_ingest.rest import BudgetEpisode, SalesforceRest
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import LeaseLostError, Store
from services.cdc_ingest.translate import (
    GapOrder,
    OverflowOrder,
    Translated,
    event_origin,
    set_master_records,
    translate_event,
)
from services.cdc_ingest.typed import FieldTypes
from services.common.connections import ConnectionUnavailableError
from services.common.governor_client import BudgetUnavailable
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy

log = logging.getLogger(__name__)

# The tenant's Pub/Sub client for its org id.
PubSubFactory = Callable[[str], Awaitable[PubSubClient]]


@dataclass
class _Event:
    """One event of a FetchResponse: what it publishes, and what checkpointing past it saves."""

    replay_id: bytes
    commit_time: datetime | None
    changes: list[RecordChanged] = field(default_factory=list)


@dataclass
class StreamState:
    """Where the stream is: the start of the next subscription and what to skip."""

    start: Start
    # Events committed before this are already covered by a backfill or catch-up read.
    skip_before: datetime | None = None


class Stream:
    def __init__(
        self,
        *,
        tenant_id: str,
        settings: CdcIngestSettings,
        rest: SalesforceRest,
        pubsub_factory: PubSubFactory,
        store: Store,
        publisher: Publisher,
        repairs: Repairs,
        objects: Objects,
        reconnect: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        metrics: Metrics | None = None,
        snapshots: Snapshots,
        completer: UpdateCompleter | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._completer = completer
        self._settings = settings
        self._rest = rest
        self._pubsub_factory = pubsub_factory
        self._store = store
        self._publisher = publisher
        self._repairs = repairs
        self._objects = objects
        self._reconnect = reconnect
        self._sleep = sleep
        self._metrics = metrics
        self._snapshots = snapshots
        self._checked_schemas: set[str] = set()
        self._masters_budget = BudgetEpisode(tenant_id, "merge masters wait for budget", sleep=sleep)
        self._repair_budget = BudgetEpisode(tenant_id, "gap repairs and catch-ups wait for budget", sleep=sleep)
        self._describe_budget = BudgetEpisode(
            tenant_id, "new event schemas decoded with the describe at hand", sleep=sleep
        )
        self._stream_budget = BudgetEpisode(tenant_id, "the stream waits for budget", sleep=sleep)

    async def run(self, state: StreamState) -> None:
        """Subscribe, handle, checkpoint; reconnect with capped, jittered backoff; never returns."""
        org_id = await self._rest.org_id()
        pubsub = await self._pubsub_factory(org_id)
        failures = 0
        while True:
            try:
                async for response in pubsub.subscribe(
                    self._settings.channel,
                    state.start,
                    batch=self._settings.fetch_batch,
                    idle_timeout=self._settings.stream_idle_timeout_seconds,
                ):
                    failures = 0
                    await self._handle(pubsub, response, state)
                    self._stream_budget.granted()
            except ReplayIdInvalidError as error:
                if self._metrics is not None:
                    self._metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason="replay_expired").inc()
                await self._catch_up(state, error)
                continue
            except PubSubAuthError as error:
                reason = "auth"
                log.info(
                    "pubsub auth refused, logging in again", extra={"tenant_id": self.tenant_id, "err": str(error)}
                )
                await pubsub.reauthenticate()
            except (PubSubError, asyncio.InvalidStateError) as error:
                # InvalidStateError: the server ended the call while this side was busy (waiting for
                # budget, say); grpc says so only when the next FetchRequest is written.
                reason = "unavailable"
                log.warning("pubsub stream failed", extra={"tenant_id": self.tenant_id, "err": str(error)})
            except BudgetUnavailable as refusal:
                # Merge masters, repairs and catch-ups wait in place; a refusal anywhere else starts
                # again from the last checkpoint once the governor expects budget, without a traceback.
                if self._metrics is not None:
                    self._metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason="budget").inc()
                await self._stream_budget.wait(refusal)
                continue
            except (LeaseLostError, ConnectionUnavailableError, asyncio.CancelledError):
                # A lost lease ends the worker; so does an unusable connection, which only an admin
                # can mend (the supervisor restarts the worker until then).
                raise
            except Exception:
                # A failed REST call inside a repair, Kafka unavailable, ...: start again from the
                # last checkpoint after a pause rather than skip anything.
                reason = "error"
                log.exception("stream handling failed", extra={"tenant_id": self.tenant_id})
            failures += 1
            if self._metrics is not None:
                self._metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason=reason).inc()
            await self._sleep(self._reconnect.delay(failures))

    async def _handle(self, pubsub: PubSubClient, response: FetchResponse, state: StreamState) -> None:
        pending: list[_Event] = []
        for consumer_event in response.events:
            replay_id = bytes(consumer_event.replay_id)
            translated = await self._translate(pubsub, consumer_event, replay_id)
            event = _Event(replay_id, None)
            if translated is not None and translated.entity in self._objects.streamed:
                event.commit_time = translated.commit_time
                skip = state.skip_before is not None and translated.commit_time < state.skip_before
                if translated.order is not None and not skip:
                    # Everything before the gap goes out (and is checkpointed, should the repair
                    # have to wait for budget) first, so per-record order holds.
                    await self._flush(pending, state)
                    pending = []
                    await self._repair(translated.order)
                elif not skip:
                    event.changes.extend(c for c in translated.changes if not self._snapshots.covers(c))
            pending.append(event)
        await self._flush(pending, state)
        if not pending and response.latest_replay_id:
            # A keepalive: nothing on this channel up to latest_replay_id, so resuming after it
            # skips nothing and saves replaying a long quiet stretch.
            await self._checkpoint([_Event(bytes(response.latest_replay_id), None)], state)

    async def _flush(self, events: Sequence[_Event], state: StreamState) -> None:
        """Complete, publish and checkpoint ``events``, in order.

        Out of budget, an event whose completion needs a REST call (a deletion that may be a merge
        loser's) waits for budget in place, everything before it published and checkpointed first.
        """
        waiting = list(events)
        while waiting:
            refused: BudgetUnavailable | None = None
            try:
                await self._complete([change for event in waiting for change in event.changes])
                ready, waiting = waiting, []
            except BudgetUnavailable as refusal:
                refused = refusal
                first = await self._first_needing_rest(waiting)
                ready, waiting = waiting[:first], waiting[first:]
                # Nothing in these needs a call the completer cannot do without.
                await self._complete([change for event in ready for change in event.changes])
            else:
                self._masters_budget.granted()
            await self._publisher.publish([change for event in ready for change in event.changes], "stream")
            await self._checkpoint(ready, state)
            if refused is not None and waiting:
                await self._masters_budget.wait(refused)

    async def _first_needing_rest(self, events: Sequence[_Event]) -> int:
        """The index of the first event with a deletion whose merge master must be read (len if none)."""
        for index, event in enumerate(events):
            for change in event.changes:
                if not is_deletion(change) or MASTER_RECORD_ID in change.fields:
                    continue
                # Whether it can merge is described; an object not described yet may.
                if not self._rest.knows(change.object_type) or await self._rest.mergeable(change.object_type):
                    return index
        return len(events)

    async def _checkpoint(self, events: Sequence[_Event], state: StreamState) -> None:
        if not events:
            return
        commits = [event.commit_time for event in events if event.commit_time is not None]
        last_replay = events[-1].replay_id
        await self._store.save_checkpoint(
            self.tenant_id, self._settings.channel, last_replay, commits[-1] if commits else None
        )
        state.start = Start.after(last_replay)

    async def _catch_up(self, state: StreamState, error: ReplayIdInvalidError) -> None:
        """The catch-up after an expired replay id, waiting in place for budget (it reads everything again)."""
        await self._repair_budget.until_granted(lambda: self._repairs.catch_up_expired(state, error))

    async def _repair(self, order: GapOrder | OverflowOrder) -> None:
        """A gap's or an overflow's re-read, waiting in place for budget as long as the governor says."""
        await self._repair_budget.until_granted(lambda: self._repairs.repair(order), entity=order.entity)

    async def _translate(
        self, pubsub: PubSubClient, consumer_event: ConsumerEvent, replay_id: bytes
    ) -> Translated | None:
        event = consumer_event.event
        try:
            schema = await pubsub.schema(event.schema_id)
            record = schema.decode(event.payload)
            entity, commit_time = event_origin(record)
            if entity not in self._objects.streamed:
                # An object this tenant does not sync: checkpointed past, never published.
                return Translated(entity, commit_time)
            types = await self._types(entity, schema)
            return translate_event(
                tenant_id=self.tenant_id,
                channel=self._settings.channel,
                replay_id=replay_id,
                schema=schema,
                record=record,
                field_types=types,
            )
        except UndecodableError as error:
            # Only the event's own data raises this (never GetSchema, describe or Kafka), so
            # moving past it loses nothing a retry could have saved.
            rejection = undecodable(
                error, channel=self._settings.channel, replay_id=replay_id, schema_id=event.schema_id
            )
            await self._publisher.reject(rejection, event.payload)
            return None

    async def _types(self, entity: str, schema: ChangeEventSchema) -> FieldTypes:
        # Refused only when never described (the worker's start describes every object, or stands the
        # stored describe in): nothing to decode with but what the call would return.
        types = await self._describe_budget.until_granted(lambda: self._rest.fields(entity), entity=entity)
        if schema.schema_id not in self._checked_schemas:
            # A new schema may carry fields added since describe was cached.
            names = [flat_name(f.name, c) for f in schema.fields[1:] for c in f.children] + [
                f.name for f in schema.fields[1:] if not f.is_compound
            ]
            if any(name not in types for name in names):
                try:
                    types = await self._rest.fields(entity, refresh=True)
                except BudgetUnavailable as refusal:
                    # A field describe does not know keeps its wire type; the schema is checked
                    # again on its next event.
                    self._describe_budget.note(refusal, entity=entity)
                    return types
                self._describe_budget.granted()
            self._checked_schemas.add(schema.schema_id)
        return types

    async def _complete(self, changes: Sequence[RecordChanged]) -> None:
        """What the events leave out that mapping needs: merge masters, and filtered records' state."""
        await self.add_masters(changes)
        if self._completer is not None:
            await self._completer.complete(changes)

    async def add_masters(self, changes: Sequence[RecordChanged]) -> None:
        """Set MasterRecordId on the DELETE changes of merge losers.

        A CDC DELETE event carries no field values, so the only trace of a merge (the loser's
        MasterRecordId, which mapping needs to re-point the app's record) is in the recycle bin:
        one queryAll per object and batch of deleted ids.
        """
        deleted: dict[str, list[str]] = {}
        for change in changes:
            if is_deletion(change) and MASTER_RECORD_ID not in change.fields:
                deleted.setdefault(change.object_type, []).append(change.record_id)
        masters: dict[tuple[str, str], str] = {}
        for entity, record_ids in deleted.items():
            if not await self._rest.mergeable(entity):
                continue
            wanted = list(dict.fromkeys(record_ids))
            for start in range(0, len(wanted), IDS_PER_QUERY):
                query = merge_losers_query(entity, wanted[start : start + IDS_PER_QUERY])
                async for row in self._rest.query(query, all_rows=True):
                    if row.get(MASTER_RECORD_ID):
                        masters[(entity, str(row["Id"]))] = str(row[MASTER_RECORD_ID])
        set_master_records(changes, masters)

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
from dataclasses import dataclass
from datetime import datetime

from services.cdc_ingest.contract import ConsumerEvent, FetchResponse, RecordChanged, is_deletion
from services.cdc_ingest.cursor import IDS_PER_QUERY, merge_losers_query
from services.cdc_ingest.describe import MASTER_RECORD_ID
from services.cdc_ingest.event_schema import ChangeEventSchema, flat_name
from services.cdc_ingest.filters import UpdateCompleter
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.pubsub import PubSubAuthError, PubSubClient, PubSubError, ReplayIdInvalidError, Start
from services.cdc_ingest.rejection import UndecodableError, undecodable
from services.cdc_ingest.repair import Repairs
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import LeaseLostError, Store
from services.cdc_ingest.translate import Translated, event_origin, set_master_records, translate_event
from services.cdc_ingest.typed import FieldTypes
from services.common.connections import ConnectionUnavailableError
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy

log = logging.getLogger(__name__)

# The tenant's Pub/Sub client for its org id.
PubSubFactory = Callable[[str], Awaitable[PubSubClient]]


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
        self._checked_schemas: set[str] = set()

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
            except ReplayIdInvalidError as error:
                if self._metrics is not None:
                    self._metrics.cdc_reconnects.labels(tenant=self.tenant_id, reason="replay_expired").inc()
                await self._repairs.catch_up_expired(state, error)
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
        pending: list[RecordChanged] = []
        last_replay: bytes | None = None
        last_commit: datetime | None = None
        for consumer_event in response.events:
            replay_id = bytes(consumer_event.replay_id)
            translated = await self._translate(pubsub, consumer_event, replay_id)
            if translated is not None and translated.entity in self._objects.streamed:
                skip = state.skip_before is not None and translated.commit_time < state.skip_before
                if translated.order is not None and not skip:
                    # Everything before the gap goes out first, so per-record order holds.
                    await self._complete(pending)
                    await self._publisher.publish(pending, "stream")
                    pending = []
                    await self._repairs.repair(translated.order)
                elif not skip:
                    pending.extend(translated.changes)
                last_commit = translated.commit_time
            last_replay = replay_id
        await self._complete(pending)
        await self._publisher.publish(pending, "stream")
        if last_replay is None and response.latest_replay_id:
            # A keepalive: nothing on this channel up to latest_replay_id, so resuming after it
            # skips nothing and saves replaying a long quiet stretch.
            last_replay = bytes(response.latest_replay_id)
        if last_replay is not None:
            await self._store.save_checkpoint(self.tenant_id, self._settings.channel, last_replay, last_commit)
            state.start = Start.after(last_replay)

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
        types = await self._rest.fields(entity)
        if schema.schema_id not in self._checked_schemas:
            # A new schema may carry fields added since describe was cached.
            names = [flat_name(f.name, c) for f in schema.fields[1:] for c in f.children] + [
                f.name for f in schema.fields[1:] if not f.is_compound
            ]
            if any(name not in types for name in names):
                types = await self._rest.fields(entity, refresh=True)
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

"""One tenant's ingestion: the orchestration only. The work is done by the parts, which share one
publisher: :mod:`~services.cdc_ingest.stream` (subscription, event handling, merges),
:mod:`~services.cdc_ingest.repair` (gaps, overflows, expired replay ids),
:mod:`~services.cdc_ingest.polling` and :mod:`~services.cdc_ingest.backfill` (REST and Bulk 2.0);
decisions live in the pure modules (translate, cursor, typed, bitmap, selection).

Order of work and the hand-overs (the part that must neither drop nor invent changes)
=====================================================================================
*First connection* (no replay checkpoint): every configured object is backfilled (REST or Bulk
2.0, resumable), then the stream subscribes **EARLIEST** and skips events committed before the
backfill began (less the overlap), because the snapshots already reflect them; everything from
then on is replayed. Nothing between "backfill read the record" and "stream started" can be lost:
those events are all still retained and replayed.

*Steady state*: the stream resumes CUSTOM after the checkpoint; each FetchResponse is published and
acknowledged before its replay id is checkpointed. Gaps, overflows and expired replay ids are
repaired by re-reading before the stream moves on (see :mod:`services.cdc_ingest.repair`). Polled
objects and backfills requested meanwhile run alongside it.

*Objects the org does not select for CDC*: Salesforce sends nothing for them and reports no
error, so at start a tenant that streams reads the standard channel's selection once (Tooling API,
PlatformEventChannelMember; see :mod:`services.cdc_ingest.selection`) through the governed client.
Every object configured for streaming whose change event is not selected is served as a polled
object from then on (same cursors, same backfill), and ``cdc.not_enabled`` is logged for it, once
per start. When the selection cannot be read (the integration user lacks View Setup and
Configuration), or the tenant has no API budget for it, the configuration stands and one warning is
logged; a refusal for budget is read again at the worker's next start. The selection is read at start
only: an object selected while the tenant runs stays polled until the next start, and the stream
checkpoints past its events meanwhile, so changes after its last poll before that start are not
read again; asking for a backfill of the object (a job: services.cdc_ingest.jobs) covers them. One
deselected while the tenant runs is silent until the next start, whose first poll reads it from its
backfill's start: re-read, not lost (an object never backfilled is polled from that start on).

*Out of API budget* (the governor refuses the tenant's REST calls; Pub/Sub streaming costs none):
the worker starts anyway where it can, so that the stream keeps publishing what needs no REST call.
A describe refused at start is replaced by the one stored in PostgreSQL at the last describe (only
an object never described fails the start, and the supervisor waits for budget before the next);
in the stream, updates whose completion is refused go out as they came, and a merge master or a gap
repair, which need the call, wait for budget in place, everything before them published and
checkpointed first; polls and jobs wait for budget and carry on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.cdc_ingest.backfill import Backfiller
from services.cdc_ingest.filters import UpdateCompleter, pushdown
from services.cdc_ingest.handover import Snapshots
from services.cdc_ingest.jobs import JobRunner
from services.cdc_ingest.polling import Poller
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.pubsub import Start
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.reconcile import Reconciler
from services.cdc_ingest.repair import Repairs
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.schema_schedule import SchemaSchedule
from services.cdc_ingest.selection import Objects, checks_selection, selection_refused, serving
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import ChangeSink
from services.cdc_ingest.store import Store
from services.cdc_ingest.stream import PubSubFactory, Stream, StreamState
from services.common.governor_client import BudgetUnavailable
from services.common.metrics import Metrics
from services.common.retry import RetryPolicy
from services.common.salesforce import SalesforceApiError
from services.common.schema_refresh import SELECTED_ENTITIES_QUERY, change_event_name
from services.common.schema_store import latest_objects
from services.common.tenant_config import TenantConfig

log = logging.getLogger(__name__)


def poll_intervals(config: TenantConfig) -> dict[str, float]:
    """Each object's poll interval set by its pairs' schedules (the shortest, when pairs disagree)."""
    intervals: dict[str, float] = {}
    for pair in config.spec.objects:
        seconds = pair.poll_interval_seconds
        if seconds is not None:
            entity = pair.salesforce.object
            intervals[entity] = min(seconds, intervals.get(entity, seconds))
    return intervals


class TenantWorker:
    """Everything one tenant needs, for as long as this replica holds its lease."""

    def __init__(
        self,
        *,
        tenant_id: str,
        config: TenantConfig,
        settings: CdcIngestSettings,
        rest: SalesforceRest,
        pubsub_factory: PubSubFactory,
        store: Store,
        sink: ChangeSink,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        schema_schedule: SchemaSchedule | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.schema_schedule = schema_schedule
        self.config = config
        self.settings = settings
        self.rest = rest
        self.store = store
        names = [pair.salesforce.object for pair in config.spec.objects]
        cdc = config.spec.sync.cdc
        polled = [o for o in names if not cdc or settings.polls(tenant_id, o)]
        self.objects = Objects(streamed=[o for o in names if o not in polled], polled=polled)
        overlap = settings.poll_overlap
        reconnect = RetryPolicy(
            base_delay=settings.reconnect_base_delay_seconds,
            max_delay=settings.reconnect_max_delay_seconds,
            max_attempts=None,
        )
        snapshots = Snapshots(config.spec.salesforce.call_options_client)
        publisher = Publisher(tenant_id, sink, store, metrics, snapshots=snapshots)
        reader = RecordReader(tenant_id=tenant_id, rest=rest, publisher=publisher, page_size=settings.poll_page_size)
        repairs = Repairs(
            tenant_id=tenant_id,
            channel=settings.channel,
            overlap=overlap,
            rest=rest,
            store=store,
            reader=reader,
            publisher=publisher,
            objects=self.objects,
            metrics=metrics,
        )
        completer = UpdateCompleter(config, rest, reader)
        self.stream = Stream(
            tenant_id=tenant_id,
            settings=settings,
            rest=rest,
            pubsub_factory=pubsub_factory,
            store=store,
            publisher=publisher,
            repairs=repairs,
            objects=self.objects,
            reconnect=reconnect,
            sleep=sleep,
            metrics=metrics,
            completer=completer if completer.needed else None,
            snapshots=snapshots,
        )
        self.poller = Poller(
            tenant_id=tenant_id,
            interval_seconds=config.spec.sync.poll_interval_seconds,
            overlap=overlap,
            store=store,
            reader=reader,
            reconnect=reconnect,
            sleep=sleep,
            intervals=poll_intervals(config),
        )
        self.backfiller = Backfiller(
            tenant_id=tenant_id,
            settings=settings,
            rest=rest,
            store=store,
            reader=reader,
            publisher=publisher,
            objects=self.objects,
            snapshots=snapshots,
            filters=pushdown(config),
        )
        self.jobs = JobRunner(
            tenant_id=tenant_id,
            config=config,
            store=store,
            objects=self.objects,
            poller=self.poller,
            backfiller=self.backfiller,
            reconciler=Reconciler(
                tenant_id=tenant_id,
                rest=rest,
                reader=reader,
                store=store,
                page_size=settings.poll_page_size,
                settle=settings.reconcile_settle,
            ),
            every_seconds=settings.lease_renew_seconds,
            sleep=sleep,
        )

    async def run(self) -> None:
        """Serve the tenant until cancelled or the lease is lost (LeaseLostError)."""
        await self.poll_what_cdc_does_not_send()
        await self.describe_all()
        await self.jobs.requeue_interrupted()
        checkpoint = await self.store.checkpoint(self.tenant_id, self.settings.channel)
        if checkpoint is not None:
            state = StreamState(Start.after(checkpoint.replay_id))
        elif self.settings.backfill_on_first_connect:
            started = await self.jobs.first_backfills()
            state = StreamState(Start.earliest(), started - self.settings.poll_overlap)
        else:
            state = StreamState(Start.latest())
        async with asyncio.TaskGroup() as group:
            if self.objects.streamed:
                group.create_task(self.stream.run(state), name=f"stream-{self.tenant_id}")
            for entity in self.objects.polled:
                group.create_task(self.poller.poll_forever(entity), name=f"poll-{self.tenant_id}-{entity}")
            group.create_task(self.jobs.run_forever(), name=f"jobs-{self.tenant_id}")
            if self.schema_schedule is not None:
                group.create_task(self.schema_schedule.run_forever(), name=f"schema-{self.tenant_id}")

    async def describe_all(self) -> None:
        """Describe every synced object again; the stored describe of one refused for budget.

        Mapping reads every synced object's describe from Postgres (written on each describe), and a
        restart is when field changes made in Setup are picked up. Without budget, the stored one
        is what this worker last knew: the stream decodes with it (a field added since keeps its
        wire type) and describes again once a new event schema names a field it lacks.
        """
        refused: list[str] = []
        last: BudgetUnavailable | None = None
        for entity in self.objects.every:
            try:
                await self.rest.fields(entity, refresh=True)
            except BudgetUnavailable as refusal:
                refused.append(entity)
                last = refusal
        if last is None:
            return
        async with self.store.pool.acquire() as db:
            stored = await latest_objects(db, self.tenant_id, refused)
        by_name = {name.lower(): described.object for name, described in stored.items()}
        missing = [entity for entity in refused if by_name.get(entity.lower()) is None]
        if missing:
            # Nothing to stand in for them: the supervisor starts the worker again at not_before.
            raise BudgetUnavailable(self.tenant_id, last.not_before, f"{last.reason}; never described: {missing}")
        for entity in refused:
            stored_object = by_name[entity.lower()]
            assert stored_object is not None
            self.rest.adopt_stored(entity, stored_object)
        log.warning(
            "tenant out of API budget at start; using the stored describes",
            extra={"tenant_id": self.tenant_id, "objects": refused, "not_before": last.not_before.isoformat()},
        )

    async def poll_what_cdc_does_not_send(self) -> None:
        """Move streamed objects whose change events the org does not select to polling (see the module docstring)."""
        if not self.objects.streamed or not checks_selection(self.settings.channel):
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
        except BudgetUnavailable as refusal:
            log.warning(
                "no API budget to read the org's CDC selection; every object configured for streaming is"
                " streamed until the worker's next start",
                extra={"tenant_id": self.tenant_id, "not_before": refusal.not_before.isoformat()},
            )
            return
        decided = serving(self.objects.streamed, self.objects.polled, selected)
        self.objects.streamed, self.objects.polled = list(decided.streamed), list(decided.polled)
        for entity in decided.not_enabled:
            event = change_event_name(entity)
            await self.store.log_event(
                self.tenant_id,
                "cdc.not_enabled",
                message=f"{entity} is not selected for Change Data Capture in the org ({event} is not on the"
                f" ChangeEvents channel); polling it every {self.poller.interval(entity):g} s instead",
                code="CDC_NOT_ENABLED",
                detail={"entity": entity, "change_event": event, "channel": self.settings.channel},
            )

"""The mapping handler: changes from either side in, mapped changes (ChangeMapped events) out.

Thin over :mod:`links` and :mod:`translate`; Lead conversions and merges, which re-point links
instead of mapping fields, are in :mod:`relink`. Changes come in batches (see
:mod:`services.common.kafka`) and are mapped one after the other, in the batch's order, inside
one database transaction per batch (the batch's :class:`~services.mapping.storage.BatchLinks`
keeps that to a few statements). All the batch's events are published, and acknowledged by the
broker, inside it, before it commits, so a crash in between repeats both. Repeating is harmless:
link ids and event ids are derived from the input.

A change that cannot be mapped is written to the sync log and handed back to be dead-lettered;
the others of its batch go on (:meth:`Mapper.handle_batch`). Each change's outcome is booked
with its pair's :class:`~services.mapping.quarantine.Quarantines`: the changes of a quarantined
pair are handed back without being mapped, as *contained* rejections that the service-wide
breaker does not count. Producer fields are checked as :mod:`services.mapping.intake` says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from services.common.change import Change, ChangeKind, Side
from services.common.db import Connection, Pool
from services.common.errors import InvalidEvent, RecordTooLargeError, RetryableError
from services.common.metrics import UNKNOWN_TENANT, Metrics
from services.common.sync_log import Entry
from services.common.tenant_config import ObjectPair, StoredConfig
from services.common.values import Reference
from services.mapping.events import MappedEvent, Unreadable
from services.mapping.intake import Correction, claims_echo, clamp_commit_time, untagged
from services.mapping.links import (
    Link,
    app_pairs,
    conversion_of,
    conversion_target,
    external_id_in,
    link_id_of,
    mapped_event_id,
    merge_winner,
    pair_for,
    reference_needs,
    released_event_id,
)
from services.mapping.quarantine import PairKey, Quarantined, Quarantines
from services.mapping.relink import convert, merge
from services.mapping.storage import (
    BatchLinks,
    ConcurrentLinkError,
    Configs,
    Describes,
    HeldReference,
    OpenLinks,
    SyncLog,
)
from services.mapping.translate import FilterOutcome, MappedField, RejectedChangeError, filter_decision, translate

log = logging.getLogger(__name__)

# Publishes events in order; returns once the broker acknowledged all (acks=all).
Publish = Callable[[Sequence[MappedEvent]], Awaitable[None]]

# A batch that keeps meeting links created concurrently goes back to the consumer's redelivery.
_CONCURRENT_ATTEMPTS = 3

DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=5)
# The rejection code of a change whose mapped event is too large for a Kafka record.
RECORD_TOO_LARGE = "RECORD_TOO_LARGE"


@dataclass(frozen=True)
class _Item:
    """A change that passed the checks that need no link: its place in the batch, config and pair."""

    index: int
    change: Change
    stored: StoredConfig
    pair: ObjectPair


@dataclass(frozen=True)
class _Rejection:
    tenant_id: str
    record_id: str
    code: str
    message: str
    event_id: str


def _candidate_pairs(item: _Item) -> list[ObjectPair]:
    """The pairs an app change may belong to; a Salesforce object belongs to one pair only."""
    if item.change.side is not Side.APP:
        return [item.pair]
    return app_pairs(item.stored.config, item.pair)


class _Refused(Exception):  # noqa: N818 (carries a rejection out of a transaction, rolling it back)
    def __init__(self, position: int, rejection: _Rejection) -> None:
        super().__init__(rejection.message)
        self.position = position
        self.rejection = rejection


@dataclass
class _Batch:
    """What handling one batch found out besides its events, by the changes' index in the batch."""

    refused: dict[int, InvalidEvent] = field(default_factory=dict)
    rejections: list[_Rejection] = field(default_factory=list)
    # The pair (and the tenant's configuration version) each attributable change was counted under.
    pairs: dict[int, tuple[PairKey, int | None]] = field(default_factory=dict)
    corrected: list[tuple[Change, Correction]] = field(default_factory=list)
    # Each tenant's configuration, looked up once per batch: a batch is mapped under one version.
    configs: dict[str, StoredConfig | None] = field(default_factory=dict)

    def refuse(self, index: int, rejection: _Rejection) -> None:
        self.refused[index] = InvalidEvent(f"{rejection.code}: {rejection.message}")
        self.rejections.append(rejection)


def _rejection(change: Change, code: str, message: str) -> _Rejection:
    return _Rejection(change.tenant_id, change.record_id, code, message, change.event_id)


def _unmapped(change: Change) -> str:
    """What a change no pair maps is counted under: its side and object."""
    return f"{change.side}:{change.object_type}"


# Never held back by a record filter: a delete or undelete of a synced record follows the pair's
# delete policy whatever its fields hold.
_NOT_FILTERED = frozenset({ChangeKind.DELETE, ChangeKind.UNDELETE})


def _changed_only(change: Change) -> Change:
    if change.kind.carries_full_record:
        return change
    return replace(change, fields={name: v for name, v in change.fields.items() if change.was_changed(name)})


class Mapper:
    """Maps batches of changes over the storage it is given (see :mod:`services.mapping.storage`)."""

    def __init__(
        self,
        pool: Pool,
        *,
        links: OpenLinks,
        configs: Configs,
        describes: Describes,
        sync_log: SyncLog,
        publish: Publish,
        quarantines: Quarantines | None = None,
        max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        service_name: str = "mapping",
    ) -> None:
        self._pool = pool
        self._links = links
        self._configs = configs
        self._describes = describes
        self._sync_log = sync_log
        self._publish = publish
        self._quarantines = quarantines or Quarantines()
        self._max_future_skew = max_future_skew
        self._now = now
        self._metrics = metrics
        self._service_name = service_name

    async def handle_batch(self, changes: Sequence[Change | Unreadable]) -> dict[int, InvalidEvent]:
        """Map ``changes`` in order; returns the rejected ones by index (already in the sync log,
        but for those of a quarantined pair: its quarantine's beginning is).

        When it returns, every other change's links are committed and its events acked.
        """
        batch = _Batch()
        async with self._pool.acquire() as conn:
            items: list[_Item] = []
            for index, change in enumerate(changes):
                try:
                    item = await self._prepare(conn, index, change, batch)
                except _Refused as error:
                    batch.refuse(index, error.rejection)
                    continue
                if item is not None:
                    items.append(item)
            # Most batches commit in one attempt. A change refused half-way (translate rejects it
            # after its link was looked up) rolls its attempt back; the changes before it then
            # commit on their own and the rest goes on after it, so each change is mapped at most
            # twice however many are refused, and the order of the others is kept.
            start, end = 0, len(items)
            while start < len(items):
                failed = await self._attempt(conn, items[start:end], batch)
                if failed is None:
                    start, end = end, len(items)
                    continue
                position, rejection = failed
                bad = items.pop(start + position)
                batch.refuse(bad.index, rejection)
                end = start + position
            await self._book(conn, batch)
            for change, correction in batch.corrected:
                await self._correct(conn, change, correction)
            for r in batch.rejections:
                await self._sync_log.record(
                    conn,
                    Entry(
                        tenant_id=r.tenant_id or "unknown",
                        event="change.rejected",
                        record_id=r.record_id or None,
                        code=r.code,
                        message=r.message,
                        detail={"source_event_id": r.event_id},
                    ),
                )
        return batch.refused

    async def _prepare(self, conn: Connection, index: int, change: Change | Unreadable, batch: _Batch) -> _Item | None:
        """The change with its config and pair, None to ignore it (or when its pair's quarantine
        refused it, in ``batch``); raises _Refused."""
        if isinstance(change, Unreadable):
            raise _Refused(
                index, _Rejection(change.tenant_id, change.record_id, "INVALID_CHANGE", change.reason, change.event_id)
            )
        if not change.record_id:
            raise _Refused(
                index, _Rejection(change.tenant_id, "", "INVALID_CHANGE", "missing record_id", change.event_id)
            )
        if change.tenant_id not in batch.configs:
            batch.configs[change.tenant_id] = await self._configs.current(conn, change.tenant_id)
        stored = batch.configs[change.tenant_id]
        pair = pair_for(stored.config, change.side, change.object_type) if stored is not None else None
        key = (change.tenant_id, pair.name if pair is not None else _unmapped(change))
        version = stored.version if stored is not None else None
        quarantine = self._quarantines.holding(key, version)
        if quarantine is not None:
            batch.refused[index] = InvalidEvent(f"QUARANTINED: {quarantine.reason}", contained=True)
            self._count_quarantined(quarantine)
            return None
        batch.pairs[index] = (key, version)
        if stored is None:
            raise _Refused(index, _rejection(change, "UNKNOWN_TENANT", "tenant has no configuration"))
        if pair is None:
            message = f"no object pair maps {change.side} object {change.object_type!r}"
            raise _Refused(index, _rejection(change, "UNKNOWN_OBJECT", message))
        if change.kind is ChangeKind.GAP:
            # cdc-ingest repairs gaps itself and publishes the re-read records as snapshots.
            log.debug("gap event ignored", extra={"tenant": change.tenant_id, "record": change.record_id})
            return None
        change, correction = clamp_commit_time(change, self._now(), self._max_future_skew)
        if correction is not None:
            batch.corrected.append((change, correction))
        return _Item(index, change, stored, pair)

    async def _book(self, conn: Connection, batch: _Batch) -> None:
        """Count each attributable change's outcome with its pair, in batch order; a rejection
        that begins its pair's quarantine, or comes after that, becomes a contained one."""
        for index, (key, version) in sorted(batch.pairs.items()):
            error = batch.refused.get(index)
            began = self._quarantines.record(key, version, rejected=error is not None)
            if began is not None:
                await self._quarantine_began(conn, began)
            if error is None:
                continue
            quarantine = self._quarantines.holding(key, version)
            if quarantine is not None:
                batch.refused[index] = InvalidEvent(
                    f"QUARANTINED: {quarantine.reason} (this change: {error.reason})", contained=True
                )
        for ended in self._quarantines.take_ended():
            self._gauge(ended, 0)
            log.info("quarantine ended", extra={"tenant": ended.tenant_id, "pair": ended.pair})
            await self._sync_log.record(
                conn,
                Entry(
                    tenant_id=ended.tenant_id,
                    event="pair.released",
                    message=f"pair {ended.pair!r} is no longer quarantined: its changes are mapped again",
                    detail={"pair": ended.pair, "configuration_version": ended.version},
                ),
            )

    async def _quarantine_began(self, conn: Connection, quarantine: Quarantined) -> None:
        self._gauge(quarantine, 1)
        log.warning(
            "pair quarantined: its changes are dead-lettered",
            extra={"tenant": quarantine.tenant_id, "pair": quarantine.pair, "reason": quarantine.reason},
        )
        await self._sync_log.record(
            conn,
            Entry(
                tenant_id=quarantine.tenant_id,
                event="pair.quarantined",
                code="QUARANTINED",
                message=f"{quarantine.reason}; its further changes are dead-lettered until a new "
                "configuration version is applied, or the cool-off ends",
                detail={
                    "pair": quarantine.pair,
                    "rejected": quarantine.rejected,
                    "samples": quarantine.samples,
                    "configuration_version": quarantine.version,
                },
            ),
        )

    def _labels(self, quarantine: Quarantined) -> dict[str, str]:
        # A tenant with no configuration never proved to be one of ours (see services.common.metrics).
        tenant = quarantine.tenant_id if quarantine.version is not None else UNKNOWN_TENANT
        return {"service": self._service_name, "tenant": tenant, "pair": quarantine.pair}

    def _gauge(self, quarantine: Quarantined, value: int) -> None:
        if self._metrics is not None:
            self._metrics.quarantined_pairs.labels(**self._labels(quarantine)).set(value)

    def _count_quarantined(self, quarantine: Quarantined) -> None:
        if self._metrics is not None:
            self._metrics.quarantined_events.labels(**self._labels(quarantine)).inc()

    async def _correct(self, conn: Connection, change: Change, correction: Correction) -> None:
        """Count and log a producer field mapping did not take as sent."""
        if self._metrics is not None:
            self._metrics.producer_fields_corrected.labels(
                service=self._service_name, tenant=change.tenant_id, field=correction.field
            ).inc()
        await self._note(conn, change, "change.corrected", None, correction.message)

    async def _attempt(self, conn: Connection, items: Sequence[_Item], batch: _Batch) -> tuple[int, _Rejection] | None:
        """Map ``items`` in one transaction and publish their events (acked) before it commits.

        Returns None once committed (its corrections then added to ``batch``), or the first
        refused change's position after rolling back: nothing of the attempt is then kept or published.
        """
        if not items:
            return None
        for _ in range(_CONCURRENT_ATTEMPTS):
            try:
                async with conn.transaction():
                    repo = self._links(conn)
                    await repo.prefetch(
                        [
                            (i.change.tenant_id, p.name, i.change.side, i.change.record_id)
                            for i in items
                            for p in _candidate_pairs(i)
                        ]
                    )
                    events: list[MappedEvent] = []
                    # The position of the change each event came from.
                    origins: list[int] = []
                    corrected: list[tuple[Change, Correction]] = []
                    for position, item in enumerate(items):
                        change = item.change
                        try:
                            mapped = await self._map(repo, conn, item, corrected)
                        except RejectedChangeError as error:
                            # The error's text already names the field.
                            raise _Refused(position, _rejection(change, error.code, str(error))) from error
                        events += mapped
                        origins += [position] * len(mapped)
                    await repo.flush()
                    # All acked before the transaction commits.
                    try:
                        await self._publish(events)
                    except RecordTooLargeError as error:
                        # A ChangeMapped carries both sides' values: a change that fit in its own
                        # record can map to one that does not.
                        event, position = events[error.index], origins[error.index]
                        message = f"the mapped change of link {event.link.link_id} is {error.reason}"
                        rejection = _rejection(items[position].change, RECORD_TOO_LARGE, message)
                        raise _Refused(position, rejection) from error
                batch.corrected += corrected
                return None
            except _Refused as refused:
                return refused.position, refused.rejection
            except ConcurrentLinkError as error:
                # Another replica (or the other topic's consumer) linked a record meanwhile: run
                # the batch again, it now finds that link.
                log.info("batch retried", extra={"reason": str(error)})
        raise RetryableError(f"links kept being created concurrently ({_CONCURRENT_ATTEMPTS} attempts)")

    async def _map(
        self, repo: BatchLinks, conn: Connection, item: _Item, corrected: list[tuple[Change, Correction]]
    ) -> list[MappedEvent]:
        stored, change = item.stored, item.change
        pair = await self._route(repo, item)
        conversion = conversion_of(change)
        if conversion is not None:
            target = conversion_target(stored.config, pair, conversion)
            converted = await convert(repo, pair, change, target)
            await self._note(conn, change, converted.event, converted.link_id, converted.message)
            return []
        winner = merge_winner(change)
        if winner is not None:
            merged = await merge(repo, pair, change, winner)
            if merged is not None:
                await self._note(conn, change, merged.event, merged.link_id, merged.message)
            return []
        if (
            change.side is Side.APP
            and claims_echo(change, stored.config.spec.salesforce.call_options_client)
            and not change.external_id
            and await repo.find(change.tenant_id, pair.name, Side.APP, change.record_id) is None
        ):
            change, correction = untagged(change)
            corrected.append((change, correction))
        own_write = claims_echo(change, stored.config.spec.salesforce.call_options_client)
        if change.kind not in _NOT_FILTERED and pair.filtered and not own_write:
            filtered = await self._filtered(repo, conn, pair, change)
            if filtered is None:
                return []
            change = filtered
        link = await self._link(repo, pair, change)
        if link is None or link.merged_into is not None:
            return []

        needs = reference_needs(pair, change)
        resolved = await repo.other_side_ids(
            change.tenant_id, change.side, [(n.target_pair, n.record_id) for n in needs]
        )
        crm_fields = await self._describes.crm_fields(conn, change.tenant_id, pair.salesforce.object)
        # A field missing from a describe older than the mapping may just be new: not known deleted.
        described = self._describes.described_at(change.tenant_id, pair.salesforce.object)
        mapped = translate(
            pair,
            change,
            resolve=lambda p, _side, rid: resolved.get((p, rid)),
            crm_fields=crm_fields,
            absent_is_deleted=described is not None and described >= stored.applied_at,
        )
        source_names = [f.app_field if change.side is Side.APP else f.crm_field for f in mapped.fields]
        await repo.unhold(change.tenant_id, link.link_id, source_names)
        for need in needs:
            if need.field in mapped.held:
                await repo.hold(
                    HeldReference(
                        link_id=link.link_id,
                        field=need.field,
                        object_pair=pair.name,
                        origin_side=change.side,
                        target_pair=need.target_pair,
                        target_record_id=need.record_id,
                        source_event_id=change.event_id,
                        origin_commit_at=change.at,
                        origin_client=change.origin_client,
                        mapping_version=stored.version,
                    ),
                    change.tenant_id,
                )

        events: list[MappedEvent] = []
        if mapped.fields or change.kind in {ChangeKind.DELETE, ChangeKind.UNDELETE}:
            events.append(
                MappedEvent(
                    event_id=mapped_event_id(change),
                    link=link,
                    mapping_version=stored.version,
                    side=change.side,
                    kind=change.kind,
                    at=change.at,
                    origin_client=change.origin_client,
                    source_event_id=change.event_id,
                    fields=mapped.fields,
                    dropped=mapped.dropped,
                )
            )
        elif any(not d.as_configured for d in mapped.dropped):
            # Nothing travels, so the resolver never sees the change: what Salesforce's describe
            # or an unresolved reference stopped is recorded here (otherwise the resolver records
            # it with the change). Fields the mapping's direction excludes are no news.
            await self._sync_log.record(
                conn,
                Entry(
                    tenant_id=change.tenant_id,
                    event="change.dropped",
                    link_id=link.link_id,
                    record_id=change.record_id,
                    message="; ".join(f"{d.field}: {d.reason}" for d in mapped.dropped),
                    detail={
                        "source_event_id": change.event_id,
                        "object": change.object_type,
                        "dropped": {d.field: d.reason for d in mapped.dropped},
                    },
                ),
            )
        for held in await repo.take_released(link):
            released = await self._released(repo, stored, held, link)
            if released is not None:
                events.append(released)
        return events

    async def _route(self, repo: BatchLinks, item: _Item) -> ObjectPair:
        """The pair of an app record whose app object several pairs share: the one it is linked in
        (a converted Lead's link moved to the Contact pair), else the one it was created for."""
        candidates = _candidate_pairs(item)
        if len(candidates) == 1:
            return item.pair
        change = item.change
        for candidate in candidates:
            if await repo.find(change.tenant_id, candidate.name, Side.APP, change.record_id) is not None:
                return candidate
        if change.external_id:
            created_for = await repo.get(change.tenant_id, change.external_id)
            if created_for is not None:
                return next((p for p in candidates if p.name == created_for.object_pair), item.pair)
        return item.pair

    async def _link(self, repo: BatchLinks, pair: ObjectPair, change: Change) -> Link | None:
        tenant = change.tenant_id
        link = await repo.find(tenant, pair.name, change.side, change.record_id)
        if link is not None:
            return link
        if change.kind is ChangeKind.DELETE:
            return None  # never synced: nothing to tell the other side
        external_id = external_id_in(change, pair)
        if external_id is not None:
            # A record Duplex created on this side: its first event binds it to the link it was created for.
            if change.side is Side.APP:
                candidate = await repo.get(tenant, external_id)
            else:
                candidate = await repo.find_by_external_id(tenant, pair.name, external_id)
            if candidate is not None and candidate.object_pair == pair.name:
                bound = await repo.bind(candidate, change.side, change.record_id)
                if bound is not None:
                    return bound
                log.warning(
                    "external id already bound to another record; linking separately",
                    extra={"tenant": tenant, "record": change.record_id, "link": candidate.link_id},
                )
            elif candidate is None and (link_id := link_id_of(external_id, change.side)) is not None:
                # Created for a link whose row a crash rolled back; its founding change comes again.
                return await repo.adopt(tenant, pair.name, change.side, change.record_id, link_id)
        return await repo.create(tenant, pair.name, change.side, change.record_id)

    async def _released(
        self, repo: BatchLinks, stored: StoredConfig, held: HeldReference, target: Link
    ) -> MappedEvent | None:
        holder = await repo.get(target.tenant_id, held.link_id)
        pair = stored.config.object_pair(held.object_pair)
        if holder is None or pair is None or holder.merged_into is not None:
            return None
        mapping = (
            pair.field_by_app(held.field) if held.origin_side is Side.APP else pair.field_by_salesforce(held.field)
        )
        if mapping is None or target.app_record_id is None or target.crm_record_id is None:
            return None
        field = MappedField(
            mapping.app,
            mapping.salesforce,
            Reference(target.app_record_id),
            Reference(target.crm_record_id),
            changed=True,
        )
        return MappedEvent(
            event_id=released_event_id(held.source_event_id, holder.link_id, held.field),
            link=holder,
            mapping_version=stored.version,
            side=held.origin_side,
            kind=ChangeKind.UPDATE,
            at=held.origin_commit_at,
            origin_client=held.origin_client,
            source_event_id=held.source_event_id,
            fields=(field,),
        )

    async def _filtered(self, repo: BatchLinks, conn: Connection, pair: ObjectPair, change: Change) -> Change | None:
        """``change`` as it passes the pair's record filter, or None (noted in the sync log) when it does not.

        A change tells only of its own side's conditions. A linked record passed the filter before,
        so its change is decided on what it changed alone: a field it did not change still holds
        what passed (the values cdc-ingest adds are the record's current ones, maybe newer than the
        change). A record that stopped meeting some side's conditions is outside (``outside_filter``,
        by side) until a change from that side meets them again. A record that comes into the
        filter, never linked or back from outside on every side, is decided on everything the change
        carries and synced whole, as a create: the change then counts every field it carries.
        Duplex's own writes coming back, deletes and undeletes are never held back by a filter.
        """
        crm_fields = None
        if change.side is Side.CRM:
            crm_fields = await self._describes.crm_fields(conn, change.tenant_id, pair.salesforce.object)
        record_filter = pair.filter
        linked = await repo.find(change.tenant_id, pair.name, change.side, change.record_id)
        if linked is None:
            decision = filter_decision(pair, change, crm_fields)
            if decision.outcome is FilterOutcome.MATCHES:
                whole = change.kind is ChangeKind.UPDATE
                return replace(change, changed=frozenset(change.fields)) if whole else change
            reason = decision.reason
        else:
            outside = await repo.outside_filter(linked)
            decision = filter_decision(pair, change if outside else _changed_only(change), crm_fields)
            deleting = record_filter is not None and record_filter.on_leave == "delete"
            if decision.outcome is FilterOutcome.EXCLUDED and change.side not in outside:
                await repo.set_outside_filter(linked, change.side, True)
                if not outside:
                    then = (
                        "deleted on the other side as the pair's deletePolicy says" if deleting else "no longer synced"
                    )
                    message = f"{change.side} record left the {pair.name} record filter ({decision.reason}): {then}"
                    await self._note(conn, change, "change.left_filter", linked.link_id, message)
                    # As a delete from this side, the other side's record goes the way deletes go.
                    return replace(change, kind=ChangeKind.DELETE, fields={}, changed=frozenset()) if deleting else None
            elif decision.outcome is FilterOutcome.MATCHES and change.side in outside:
                await repo.set_outside_filter(linked, change.side, False)
                if outside == {change.side}:
                    message = f"{change.side} record matches the {pair.name} record filter again: synced whole"
                    await self._note(conn, change, "change.entered_filter", linked.link_id, message)
                    # After a delete, an undelete: the other side's record comes back with every field.
                    kind = ChangeKind.UNDELETE if deleting else change.kind
                    return replace(change, kind=kind, changed=frozenset(change.fields))
                outside = outside - {change.side}
            elif decision.outcome is not FilterOutcome.EXCLUDED and not outside:
                return change
            reason = decision.reason if decision.outcome is FilterOutcome.EXCLUDED else ""
            if not reason:
                reason = f"it left the filter on the {' and '.join(sorted(outside))} side"
        # "Why did this record not sync?" must be answerable from the sync log.
        message = f"{change.side} record does not match the {pair.name} record filter ({reason}): not synced"
        await self._note(conn, change, "change.filtered", linked.link_id if linked else None, message)
        return None

    async def _note(self, conn: Connection, change: Change, event: str, link_id: str | None, message: str) -> None:
        await self._sync_log.record(
            conn,
            Entry(
                tenant_id=change.tenant_id,
                event=event,
                link_id=link_id,
                record_id=change.record_id,
                message=message,
                detail={"source_event_id": change.event_id, "object": change.object_type},
            ),
        )

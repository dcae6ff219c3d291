"""The mapping handler: RecordChanged events from either side in, ChangeMapped events (keyed tenant/link) out.

Thin over :mod:`links` and :mod:`translate`. Changes come in batches (see
:mod:`services.common.kafka`) and are mapped one after the other, in the batch's order, inside
one database transaction per batch (:class:`~services.mapping.repository.BatchLinkRepository`
keeps that to a few statements). All the batch's events are published, and acknowledged by the
broker, inside it, before it commits, so a crash in between repeats both. Repeating is harmless:
link ids and event ids are derived from the input.

A change that cannot be mapped is written to the sync log and handed back to be dead-lettered;
the others of its batch go on (:meth:`Mapper.handle_batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from google.protobuf.message import Message

from services.common import sync_log
from services.common.change import Change, ChangeKind, InvalidChangeError, Side, from_proto
from services.common.codec import link_key
from services.common.errors import InvalidEvent, RetryableError
from services.common.tenant_config import ObjectPair, StoredConfig
from services.common.values import Reference, to_field_value
from services.mapping.config_cache import ConfigCache
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
from services.mapping.repository import BatchLinkRepository, ConcurrentLinkError, HeldReference, LinkRepository
from services.mapping.translate import Mapped, RejectedChangeError, matches_filter, translate

log = logging.getLogger(__name__)

# Publishes (event, key) pairs in order; returns once the broker acknowledged all (acks=all).
Publish = Callable[[Sequence[tuple[Message, bytes]]], Awaitable[None]]

# A batch that keeps meeting links created concurrently goes back to the consumer's redelivery.
_CONCURRENT_ATTEMPTS = 3

_SIDE_TO_PB = {Side.APP: record_changed_pb2.SIDE_APP, Side.CRM: record_changed_pb2.SIDE_CRM}
_KIND_TO_PB = {
    ChangeKind.CREATE: record_changed_pb2.CHANGE_KIND_CREATE,
    ChangeKind.UPDATE: record_changed_pb2.CHANGE_KIND_UPDATE,
    ChangeKind.DELETE: record_changed_pb2.CHANGE_KIND_DELETE,
    ChangeKind.UNDELETE: record_changed_pb2.CHANGE_KIND_UNDELETE,
    ChangeKind.SNAPSHOT: record_changed_pb2.CHANGE_KIND_SNAPSHOT,
}


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


class Mapper:
    def __init__(self, pool: Any, cache: ConfigCache, publish: Publish, *, service_name: str) -> None:
        self._pool = pool
        self._cache = cache
        self._publish = publish
        self._service = service_name

    async def handle_batch(self, events: Sequence[record_changed_pb2.RecordChanged]) -> dict[int, InvalidEvent]:
        """Map ``events`` in order; returns the rejected ones by index (already in the sync log).

        When it returns, every other event's links are committed and its ChangeMapped events acked.
        """
        refused: dict[int, InvalidEvent] = {}
        rejections: list[_Rejection] = []
        async with self._pool.acquire() as conn:
            items: list[_Item] = []
            for index, event in enumerate(events):
                try:
                    item = await self._prepare(conn, index, event)
                except _Refused as error:
                    refused[index] = InvalidEvent(f"{error.rejection.code}: {error.rejection.message}")
                    rejections.append(error.rejection)
                    continue
                if item is not None:
                    items.append(item)
            # Most batches commit in one attempt. A change refused half-way (translate rejects it
            # after its link was looked up) rolls its attempt back; the changes before it then
            # commit on their own and the rest goes on after it, so each change is mapped at most
            # twice however many are refused, and the order of the others is kept.
            start, end = 0, len(items)
            while start < len(items):
                failed = await self._attempt(conn, items[start:end])
                if failed is None:
                    start, end = end, len(items)
                    continue
                position, rejection = failed
                bad = items.pop(start + position)
                refused[bad.index] = InvalidEvent(f"{rejection.code}: {rejection.message}")
                rejections.append(rejection)
                end = start + position
            for r in rejections:
                await sync_log.record(
                    conn,
                    tenant_id=r.tenant_id or "unknown",
                    service=self._service,
                    event="change.rejected",
                    record_id=r.record_id or None,
                    code=r.code,
                    message=r.message,
                    detail={"source_event_id": r.event_id},
                )
        return refused

    async def _prepare(self, conn: Any, index: int, event: record_changed_pb2.RecordChanged) -> _Item | None:
        """The change with its config and pair, None to ignore it; raises _Refused."""
        try:
            change = from_proto(event)
        except InvalidChangeError as error:
            raise _Refused(
                index, _Rejection(event.tenant_id, event.record_id, "INVALID_CHANGE", str(error), event.event_id)
            ) from error
        if not change.record_id:
            raise _Refused(
                index, _Rejection(change.tenant_id, "", "INVALID_CHANGE", "missing record_id", change.event_id)
            )
        stored = await self._cache.current(conn, change.tenant_id)
        if stored is None:
            raise _Refused(
                index,
                _Rejection(
                    change.tenant_id, change.record_id, "UNKNOWN_TENANT", "tenant has no configuration", change.event_id
                ),
            )
        pair = pair_for(stored.config, change.side, change.object_type)
        if pair is None:
            message = f"no object pair maps {change.side} object {change.object_type!r}"
            raise _Refused(
                index, _Rejection(change.tenant_id, change.record_id, "UNKNOWN_OBJECT", message, change.event_id)
            )
        if change.kind is ChangeKind.GAP:
            # cdc-ingest repairs gaps itself and publishes the re-read records as snapshots.
            log.debug("gap event ignored", extra={"tenant": change.tenant_id, "record": change.record_id})
            return None
        return _Item(index, change, stored, pair)

    async def _attempt(self, conn: Any, items: Sequence[_Item]) -> tuple[int, _Rejection] | None:
        """Map ``items`` in one transaction and publish their events (acked) before it commits.

        Returns None once committed, or the first refused change's position after rolling back:
        nothing of the attempt is then kept or published.
        """
        if not items:
            return None
        for _ in range(_CONCURRENT_ATTEMPTS):
            try:
                async with conn.transaction():
                    repo = BatchLinkRepository(conn)
                    await repo.prefetch(
                        [
                            (i.change.tenant_id, p.name, i.change.side, i.change.record_id)
                            for i in items
                            for p in _candidate_pairs(i)
                        ]
                    )
                    events: list[tuple[bytes, change_mapped_pb2.ChangeMapped]] = []
                    for position, item in enumerate(items):
                        change = item.change
                        try:
                            events += await self._map(repo, conn, item)
                        except RejectedChangeError as error:
                            # The error's text already names the field.
                            rejection = _Rejection(
                                change.tenant_id, change.record_id, error.code, str(error), change.event_id
                            )
                            raise _Refused(position, rejection) from error
                    await repo.flush()
                    # All acked before the transaction commits.
                    await self._publish([(event, key) for key, event in events])
                return None
            except _Refused as refused:
                return refused.position, refused.rejection
            except ConcurrentLinkError as error:
                # Another replica (or the other topic's consumer) linked a record meanwhile: run
                # the batch again, it now finds that link.
                log.info("batch retried", extra={"reason": str(error)})
        raise RetryableError(f"links kept being created concurrently ({_CONCURRENT_ATTEMPTS} attempts)")

    async def _map(
        self, repo: LinkRepository, conn: Any, item: _Item
    ) -> list[tuple[bytes, change_mapped_pb2.ChangeMapped]]:
        stored, change = item.stored, item.change
        pair = await self._route(repo, item)
        conversion = conversion_of(change)
        if conversion is not None:
            target = conversion_target(stored.config, pair, conversion)
            await self._convert(repo, conn, pair, change, target)
            return []
        winner = merge_winner(change)
        if winner is not None:
            await self._merge(repo, conn, pair, change, winner)
            return []
        if change.kind is not ChangeKind.DELETE and not matches_filter(pair.filter, change.side, change.fields):
            # "Why did this record not sync?" must be answerable from the sync log.
            linked = await repo.find(change.tenant_id, pair.name, change.side, change.record_id)
            await self._log(
                conn,
                change,
                "change.filtered",
                linked.link_id if linked is not None else None,
                f"{change.side} record does not match the {pair.name} record filter: not synced",
            )
            return []
        link = await self._link(repo, pair, change)
        if link is None or link.merged_into is not None:
            return []

        needs = reference_needs(pair, change)
        resolved = await repo.other_side_ids(
            change.tenant_id, change.side, [(n.target_pair, n.record_id) for n in needs]
        )
        crm_fields = await self._cache.crm_fields(conn, change.tenant_id, pair.salesforce.object)
        mapped = translate(pair, change, resolve=lambda p, _side, rid: resolved.get((p, rid)), crm_fields=crm_fields)
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

        events: list[tuple[bytes, change_mapped_pb2.ChangeMapped]] = []
        if mapped.fields or change.kind in {ChangeKind.DELETE, ChangeKind.UNDELETE}:
            events.append((link_key(change.tenant_id, link.link_id), self._event(stored, link, change, mapped)))
        elif any(not d.as_configured for d in mapped.dropped):
            # Nothing travels, so the resolver never sees the change: what Salesforce's describe
            # or an unresolved reference stopped is recorded here (otherwise the resolver records
            # it with the change). Fields the mapping's direction excludes are no news.
            await sync_log.record(
                conn,
                tenant_id=change.tenant_id,
                service=self._service,
                event="change.dropped",
                link_id=link.link_id,
                record_id=change.record_id,
                message="; ".join(f"{d.field}: {d.reason}" for d in mapped.dropped),
                detail={
                    "source_event_id": change.event_id,
                    "object": change.object_type,
                    "dropped": {d.field: d.reason for d in mapped.dropped},
                },
            )
        for held in await repo.take_released(link):
            released = await self._released(repo, stored, held, link)
            if released is not None:
                events.append(released)
        return events

    async def _route(self, repo: LinkRepository, item: _Item) -> ObjectPair:
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

    async def _link(self, repo: LinkRepository, pair: ObjectPair, change: Change) -> Link | None:
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

    async def _convert(
        self, repo: LinkRepository, conn: Any, pair: ObjectPair, change: Change, target: tuple[ObjectPair, str] | None
    ) -> None:
        lead = await repo.find(change.tenant_id, pair.name, Side.CRM, change.record_id)
        if lead is None:
            await self._log(
                conn, change, "lead.converted", None, "the lead has no link (never synced, or already re-pointed)"
            )
            return
        if target is None:
            # The converted records link on their own when their changes arrive.
            message = f"no pair of the converted records is on app object {pair.app.object}: the lead's link stays"
            await self._log(conn, change, "lead.converted", lead.link_id, message)
            return
        target_pair, record_id = target
        existing = await repo.find(change.tenant_id, target_pair.name, Side.CRM, record_id)
        if existing is not None and existing.link_id != lead.link_id:
            if existing.app_record_id is not None:
                # Both already synced to different app records: keep the contact's link, stop the lead's.
                await repo.retire(lead, existing.link_id)
                await self._log(conn, change, "lead.converted", lead.link_id, f"converted into linked {record_id}")
                return
            # The converted record's own create arrived first and founded a link of its own: the
            # lead's link (which has the app record) absorbs it.
            await repo.retire(existing, lead.link_id)
        await repo.repoint(lead, target_pair.name, record_id)
        await self._log(
            conn, change, "link.repointed", lead.link_id, f"lead converted into {target_pair.name} {record_id}"
        )

    async def _merge(self, repo: LinkRepository, conn: Any, pair: ObjectPair, change: Change, winner: str) -> None:
        loser = await repo.find(change.tenant_id, pair.name, Side.CRM, change.record_id)
        if loser is None:
            return
        winner_link = await repo.find(change.tenant_id, pair.name, Side.CRM, winner)
        if winner_link is None:
            await repo.repoint(loser, pair.name, winner)
            message = f"merged into {winner}: link moved to the winner"
        elif winner_link.app_record_id is None and loser.app_record_id is not None:
            # The winner's UPDATE (another key, so another partition) arrived first and founded a
            # link with no app record: the loser's link, which has one, absorbs it.
            await repo.retire(winner_link, loser.link_id)
            await repo.repoint(loser, pair.name, winner)
            message = f"merged into {winner}, linked only since the merge as {winner_link.link_id}: link moved"
        else:
            await repo.retire(loser, winner_link.link_id)
            message = f"merged into {winner}, already linked as {winner_link.link_id}: link retired, app record kept"
        await self._log(conn, change, "link.merged", loser.link_id, message)

    def _event(
        self, stored: StoredConfig, link: Link, change: Change, mapped: Mapped
    ) -> change_mapped_pb2.ChangeMapped:
        event = change_mapped_pb2.ChangeMapped(
            event_id=mapped_event_id(change),
            tenant_id=change.tenant_id,
            link_id=link.link_id,
            object_pair=link.object_pair,
            mapping_version=stored.version,
            origin_side=_SIDE_TO_PB[change.side],
            kind=_KIND_TO_PB[change.kind],
            app_record_id=link.app_record_id or "",
            crm_record_id=link.crm_record_id or "",
            external_id=link.external_id,
            origin_client=change.origin_client,
            source_event_id=change.event_id,
        )
        for f in mapped.fields:
            event.fields.add(
                app_field=f.app_field,
                crm_field=f.crm_field,
                app_value=to_field_value(f.app_value),
                crm_value=to_field_value(f.crm_value),
                changed=f.changed,
            )
        for d in mapped.dropped:
            event.dropped_fields.add(field=d.field, reason=d.reason)
        event.origin_commit_time.FromDatetime(change.at)
        return event

    async def _released(
        self, repo: LinkRepository, stored: StoredConfig, held: HeldReference, target: Link
    ) -> tuple[bytes, change_mapped_pb2.ChangeMapped] | None:
        holder = await repo.get(target.tenant_id, held.link_id)
        pair = stored.config.object_pair(held.object_pair)
        if holder is None or pair is None or holder.merged_into is not None:
            return None
        mapping = (
            pair.field_by_app(held.field) if held.origin_side is Side.APP else pair.field_by_salesforce(held.field)
        )
        if mapping is None or target.app_record_id is None or target.crm_record_id is None:
            return None
        event = change_mapped_pb2.ChangeMapped(
            event_id=released_event_id(held.source_event_id, holder.link_id, held.field),
            tenant_id=holder.tenant_id,
            link_id=holder.link_id,
            object_pair=holder.object_pair,
            mapping_version=stored.version,
            origin_side=_SIDE_TO_PB[held.origin_side],
            kind=record_changed_pb2.CHANGE_KIND_UPDATE,
            app_record_id=holder.app_record_id or "",
            crm_record_id=holder.crm_record_id or "",
            external_id=holder.external_id,
            origin_client=held.origin_client,
            source_event_id=held.source_event_id,
        )
        event.fields.add(
            app_field=mapping.app,
            crm_field=mapping.salesforce,
            app_value=to_field_value(Reference(target.app_record_id)),
            crm_value=to_field_value(Reference(target.crm_record_id)),
            changed=True,
        )
        event.origin_commit_time.FromDatetime(held.origin_commit_at)
        return link_key(holder.tenant_id, holder.link_id), event

    async def _log(self, conn: Any, change: Change, event: str, link_id: str | None, message: str) -> None:
        await sync_log.record(
            conn,
            tenant_id=change.tenant_id,
            service=self._service,
            event=event,
            link_id=link_id,
            record_id=change.record_id,
            message=message,
            detail={"source_event_id": change.event_id, "object": change.object_type},
        )

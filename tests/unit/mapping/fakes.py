"""In-memory stand-ins for the mapper's storage (services.mapping.storage) and its producer.

:class:`FakeDatabase` keeps what the PostgreSQL tables keep, as plain dicts, and stands in for the
pool and its connection too: a transaction whose block raises leaves it as it was, as a rolled-back
transaction does. Its links behave as :class:`services.mapping.repository.LinkRepository` does on
the table (ids derived from the founding record, a taken id skipped, binds only into an empty
side); there is nothing to read ahead or defer in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.common.change import Side
from services.common.db import Connection
from services.common.sync_log import Entry
from services.common.tenant_config import StoredConfig
from services.mapping.events import MappedEvent
from services.mapping.links import Link, external_id_for, link_id_for
from services.mapping.storage import HeldReference, RecordRef
from services.mapping.translate import CrmFieldInfo

_MAX_ID_ATTEMPTS = 5


@dataclass
class FakeDatabase:
    links: dict[tuple[str, str], Link] = field(default_factory=dict)  # by (tenant, link id)
    held: dict[tuple[str, str, str], HeldReference] = field(default_factory=dict)  # by (tenant, link id, field)
    log: list[Entry] = field(default_factory=list)
    configs: dict[str, StoredConfig] = field(default_factory=dict)  # each tenant's current one
    describes: dict[tuple[str, str], Mapping[str, CrmFieldInfo]] = field(default_factory=dict)
    described: dict[tuple[str, str], datetime] = field(default_factory=dict)
    outside: set[tuple[str, str, Side]] = field(default_factory=set)  # (tenant, link id, side) outside their filter

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeDatabase]:
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        links, held, log = dict(self.links), dict(self.held), list(self.log)
        try:
            yield
        except BaseException:
            self.links, self.held, self.log = links, held, log
            raise

    def open_links(self, conn: Connection) -> FakeLinks:
        return FakeLinks(self)

    async def current(self, conn: Connection, tenant_id: str) -> StoredConfig | None:
        return self.configs.get(tenant_id)

    async def crm_fields(self, conn: Connection, tenant_id: str, crm_object: str) -> Mapping[str, CrmFieldInfo] | None:
        # Salesforce object names compare case-insensitively.
        return next(
            (f for (t, o), f in self.describes.items() if t == tenant_id and o.lower() == crm_object.lower()), None
        )

    def described_at(self, tenant_id: str, crm_object: str) -> datetime | None:
        # Taken after any mapping the tests apply, unless a test says otherwise.
        return self.described.get((tenant_id, crm_object.lower()), datetime.max.replace(tzinfo=UTC))

    async def record(self, db: Connection, entry: Entry) -> None:
        self.log.append(entry)

    def add_link(self, link: Link) -> Link:
        self.links[(link.tenant_id, link.link_id)] = link
        return link


def _holding(link: Link, side: Side, record_id: str | None) -> Link:
    return replace(link, app_record_id=record_id) if side is Side.APP else replace(link, crm_record_id=record_id)


class FakeLinks:
    """One batch's links (:class:`services.mapping.storage.BatchLinks`) in a :class:`FakeDatabase`."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def prefetch(self, refs: Sequence[RecordRef]) -> None:
        """Every lookup is a dictionary's: nothing to read ahead."""

    async def find(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link | None:
        return next(
            (
                link
                for link in self._db.links.values()
                if link.tenant_id == tenant_id and link.object_pair == pair and link.record_id(side) == record_id
            ),
            None,
        )

    async def get(self, tenant_id: str, link_id: str) -> Link | None:
        return self._db.links.get((tenant_id, link_id))

    async def find_by_external_id(self, tenant_id: str, pair: str, external_id: str) -> Link | None:
        return next(
            (
                link
                for link in self._db.links.values()
                if link.tenant_id == tenant_id and link.object_pair == pair and link.external_id == external_id
            ),
            None,
        )

    async def create(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link:
        found = await self.find(tenant_id, pair, side, record_id)
        if found is not None:
            return found
        for attempt in range(_MAX_ID_ATTEMPTS):
            link_id = link_id_for(tenant_id, pair, side, record_id if attempt == 0 else f"{record_id}#{attempt}")
            taken = self._db.links.get((tenant_id, link_id))
            if taken is None:
                return self._insert(tenant_id, pair, link_id, side, record_id)
            if attempt == 0 and taken.object_pair == pair and taken.record_id(side) is None:
                # Adopted by the record Duplex created for it: its founder joins it.
                return self._db.add_link(_holding(taken, side, record_id))
        raise RuntimeError(f"no free link id for {tenant_id}/{pair}/{side}/{record_id}")

    async def adopt(self, tenant_id: str, pair: str, side: Side, record_id: str, link_id: str) -> Link:
        found = await self.find(tenant_id, pair, side, record_id)
        if found is not None:
            return found
        taken = self._db.links.get((tenant_id, link_id))
        if taken is None:
            return self._insert(tenant_id, pair, link_id, side, record_id)
        if taken.object_pair == pair and taken.record_id(side) is None:
            return self._db.add_link(_holding(taken, side, record_id))
        return await self.create(tenant_id, pair, side, record_id)

    def _insert(self, tenant_id: str, pair: str, link_id: str, side: Side, record_id: str) -> Link:
        link = Link(tenant_id, pair, link_id, None, None, external_id_for(link_id))
        return self._db.add_link(_holding(link, side, record_id))

    async def bind(self, link: Link, side: Side, record_id: str) -> Link | None:
        current = self._db.links.get((link.tenant_id, link.link_id))
        if current is None or current.record_id(side) not in {None, record_id}:
            return None
        return self._db.add_link(_holding(current, side, record_id))

    async def repoint(self, link: Link, pair: str, crm_record_id: str) -> Link:
        current = self._db.links[(link.tenant_id, link.link_id)]
        return self._db.add_link(replace(current, object_pair=pair, crm_record_id=crm_record_id))

    async def retire(self, link: Link, merged_into: str) -> None:
        current = self._db.links[(link.tenant_id, link.link_id)]
        self._db.add_link(replace(current, crm_record_id=None, merged_into=merged_into))

    async def outside_filter(self, link: Link) -> frozenset[Side]:
        return frozenset(
            side for tenant, link_id, side in self._db.outside if (tenant, link_id) == (link.tenant_id, link.link_id)
        )

    async def set_outside_filter(self, link: Link, side: Side, outside: bool) -> None:
        key = (link.tenant_id, link.link_id, side)
        self._db.outside.add(key) if outside else self._db.outside.discard(key)

    async def other_side_ids(
        self, tenant_id: str, side: Side, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        for pair, record_id in set(wanted):
            link = await self.find(tenant_id, pair, side, record_id)
            other = link.record_id(side.other) if link is not None else None
            if other is not None:
                found[(pair, record_id)] = other
        return found

    async def hold(self, held: HeldReference, tenant_id: str) -> None:
        key = (tenant_id, held.link_id, held.field)
        kept = self._db.held.get(key)
        if kept is None or kept.origin_commit_at <= held.origin_commit_at:
            self._db.held[key] = held

    async def unhold(self, tenant_id: str, link_id: str, fields: Iterable[str]) -> None:
        for name in fields:
            self._db.held.pop((tenant_id, link_id, name), None)

    async def take_released(self, target: Link) -> list[HeldReference]:
        if target.app_record_id is None or target.crm_record_id is None:
            return []
        ids = {Side.APP: target.app_record_id, Side.CRM: target.crm_record_id}
        released = [
            key
            for key, held in self._db.held.items()
            if key[0] == target.tenant_id
            and held.target_pair == target.object_pair
            and held.target_record_id == ids[held.origin_side]
        ]
        return [self._db.held.pop(key) for key in released]

    async def flush(self) -> None:
        """Nothing is deferred."""


class Outbox:
    """Stands in for the producer: keeps what was published, in order."""

    def __init__(self) -> None:
        self.sent: list[MappedEvent] = []

    async def __call__(self, events: Sequence[MappedEvent]) -> None:
        self.sent.extend(events)

"""In-memory stand-ins for the resolver's store (services.conflict_resolver.store) and its topics.

The store keeps what the PostgreSQL tables keep, as plain dicts; a transaction whose block
raises leaves it as it was, as a rolled-back transaction does. One task at a time uses it, so
locking is nothing here.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message

from services.common.errors import RecordTooLargeError
from services.common.pauses import EVERY_PAIR, Way
from services.common.tenant_config import StoredConfig
from services.common.values import Value
from services.conflict_resolver.resolve import FieldRecord, LinkState
from services.conflict_resolver.store import (
    EventKey,
    FieldKey,
    HeldInput,
    HeldOutput,
    HoldKey,
    Holds,
    LinkKey,
    LogRow,
    PairKey,
    SentWrite,
    holds_of,
)


@dataclass
class Tables:
    processed: set[EventKey] = field(default_factory=set)
    links: dict[LinkKey, LinkState] = field(default_factory=dict)
    fields: dict[LinkKey, dict[str, FieldRecord]] = field(default_factory=dict)
    # (tenant, link, version) -> (operation, pending values)
    sent: dict[tuple[str, str, int], tuple[str, dict[str, Value]]] = field(default_factory=dict)
    log: list[LogRow] = field(default_factory=list)
    # The Salesforce ids mapping's links learnt from the resolver.
    mapping_crm_ids: dict[LinkKey, str] = field(default_factory=dict)
    # (tenant, pair or EVERY_PAIR, way) paused, and the outputs held, in order.
    pauses: set[HoldKey] = field(default_factory=set)
    held: list[HeldOutput] = field(default_factory=list)
    # The changes held undecided, by row id (rising in the order they were held).
    held_inputs: dict[int, HeldInput] = field(default_factory=dict)
    next_held_id: int = 1


class FakeTenantLinks:
    def __init__(self, tables: Tables, tenant_id: str) -> None:
        self._tables = tables
        self._tenant = tenant_id

    async def claim(self, event_id: str) -> bool:
        key = (self._tenant, event_id)
        if key in self._tables.processed:
            return False
        self._tables.processed.add(key)
        return True

    async def lock_link(self, link_id: str) -> LinkState | None:
        return self._tables.links.get((self._tenant, link_id))

    async def fields(self, link_id: str) -> dict[str, FieldRecord]:
        return dict(self._tables.fields.get((self._tenant, link_id), {}))

    async def save(self, link: LinkState, fields: Mapping[str, FieldRecord]) -> None:
        key = (self._tenant, link.link_id)
        if key in self._tables.links:  # an UPDATE: a link never seen stays unseen
            self._tables.links[key] = link
        self._tables.fields.setdefault(key, {}).update(fields)

    async def sent(self, link_id: str, version: int) -> tuple[str, dict[str, Value]] | None:
        return self._tables.sent.get((self._tenant, link_id, version))

    async def store_crm_id(self, link: LinkState, record_id: str) -> None:
        self._tables.mapping_crm_ids.setdefault((self._tenant, link.link_id), record_id)


class FakeTransaction:
    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def claim(self, event_ids: Sequence[EventKey]) -> set[EventKey]:
        fresh = set(event_ids) - self._tables.processed
        self._tables.processed |= fresh
        return fresh

    async def lock_or_create_links(self, links: Mapping[LinkKey, LinkState]) -> dict[LinkKey, LinkState]:
        for key, link in links.items():
            # As the INSERT of a new row: only the columns it sets, the rest at their defaults.
            self._tables.links.setdefault(key, LinkState(link.link_id, link.object_pair, link.external_id))
        return await self.lock_links(list(links))

    async def lock_links(self, keys: Sequence[LinkKey]) -> dict[LinkKey, LinkState]:
        return {key: self._tables.links[key] for key in sorted(set(keys)) if key in self._tables.links}

    async def fields(self, keys: Sequence[LinkKey]) -> dict[LinkKey, dict[str, FieldRecord]]:
        return {key: dict(self._tables.fields.get(key, {})) for key in sorted(set(keys))}

    async def save(self, links: Mapping[LinkKey, LinkState], fields: Mapping[FieldKey, FieldRecord]) -> None:
        for key, link in links.items():
            if key in self._tables.links:
                self._tables.links[key] = link
        for (tenant, link_id, name), record in fields.items():
            self._tables.fields.setdefault((tenant, link_id), {})[name] = record

    async def record_sent(self, sent: Sequence[SentWrite]) -> None:
        for tenant, link_id, version, operation, pending in sent:
            self._tables.sent.setdefault((tenant, link_id, version), (operation, dict(pending)))

    async def log(self, rows: Sequence[LogRow]) -> None:
        self._tables.log.extend(rows)

    async def holding(self, pairs: Collection[PairKey]) -> Holds:
        paused = {
            (tenant, pair, way)
            for tenant, pair in pairs
            for way in Way
            if {(tenant, pair, way), (tenant, EVERY_PAIR, way)} & self._tables.pauses
        }
        inputs = {key for key, _, _ in self._tables.held_inputs.values()}
        outputs = {hold for hold, _, _ in self._tables.held}
        return holds_of(
            paused=paused,
            inputs_waiting={p for p in pairs if p in inputs},
            outputs_waiting={(*p, way) for p in pairs for way in Way if (*p, way) in outputs},
        )

    async def hold(self, outputs: Sequence[HeldOutput]) -> None:
        self._tables.held.extend(outputs)

    async def hold_inputs(self, inputs: Sequence[HeldInput]) -> None:
        for held in inputs:
            key = (held[0][0], held[1])
            if key in self._tables.processed or key in {(h[0][0], h[1]) for h in self._tables.held_inputs.values()}:
                continue
            self._tables.held_inputs[self._tables.next_held_id] = held
            self._tables.next_held_id += 1

    async def held_inputs(self, tenant_id: str, object_pair: str, limit: int) -> list[tuple[int, bytes]] | None:
        paused = {way for t, p, way in self._tables.pauses if t == tenant_id and p in (object_pair, EVERY_PAIR)}
        if paused >= set(Way):
            return []
        rows = sorted((i, h[2]) for i, h in self._tables.held_inputs.items() if h[0] == (tenant_id, object_pair))
        return rows[:limit]

    async def release_inputs(self, ids: Sequence[int]) -> None:
        for row_id in ids:
            self._tables.held_inputs.pop(row_id, None)

    def tenant(self, tenant_id: str) -> FakeTenantLinks:
        return FakeTenantLinks(self._tables, tenant_id)


class FakeSession:
    def __init__(self, store: FakeStore) -> None:
        self._store = store

    async def mapping(self, tenant_id: str, version: int) -> StoredConfig | None:
        return self._store.configs.get((tenant_id, version))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        before = copy.deepcopy(self._store.tables)
        try:
            yield FakeTransaction(self._store.tables)
        except BaseException:
            self._store.tables = before
            raise


class FakeStore:
    """The resolver's state in memory (see the module doc); ``tables`` is what is committed."""

    def __init__(self, configs: Iterable[StoredConfig] = ()) -> None:
        self.configs = {(c.tenant_id, c.version): c for c in configs}
        self.tables = Tables()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[FakeSession]:
        yield FakeSession(self)

    def link(self, tenant_id: str, link_id: str) -> LinkState:
        return self.tables.links[(tenant_id, link_id)]

    def add_link(self, tenant_id: str, link: LinkState) -> None:
        self.tables.links[(tenant_id, link.link_id)] = link


class Outbox:
    """Stands in for a topic's producer: keeps the (key, event) pairs sent, in order; while
    ``down``, a publish of anything fails as one the broker never acknowledged."""

    def __init__(self, max_size: int | None = None) -> None:
        self.sent: list[tuple[bytes, Message]] = []
        self.down = False
        self.max_size = max_size

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        if events and self.down:
            raise ConnectionError("no acknowledgement from the broker")
        for index, (event, _) in enumerate(events):
            # As the real Sender: the first event over the limit is named before anything is sent.
            if self.max_size is not None and event.ByteSize() > self.max_size:
                raise RecordTooLargeError(index, f"{event.ByteSize()} bytes, over the {self.max_size}-byte limit")
        self.sent.extend((key, event) for event, key in events)

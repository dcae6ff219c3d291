"""What the resolver needs of its state, as it needs it; :mod:`repository` keeps it in PostgreSQL.

A batch of events is handled in one :class:`Session` (one database connection): the mapping
versions its events name are looked up first, then everything it reads and writes happens in one
:meth:`Session.transaction`, which commits when its block exits and rolls back when it raises.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from services.common.pauses import Way
from services.common.tenant_config import StoredConfig
from services.common.values import Value
from services.conflict_resolver.resolve import FieldRecord, LinkState

# (tenant, link id)
LinkKey = tuple[str, str]
# (tenant, link id, app field name)
FieldKey = tuple[str, str, str]
# (tenant, event id)
EventKey = tuple[str, str]
# (tenant, link id, version, operation, pending values in app terms) of a write command sent
SentWrite = tuple[str, str, int, str, Mapping[str, Value]]
# sync_log columns: tenant_id, service, event, link_id, record_id, code, message, detail (JSON text)
LogRow = tuple[str, str, str, str | None, str | None, str | None, str | None, str]
# (tenant, object pair, way) whose outputs are held (:mod:`services.common.pauses`)
HoldKey = tuple[str, str, Way]
# An output held: its hold, its record key and the encoded message
HeldOutput = tuple[HoldKey, bytes, bytes]


class TenantLinks(Protocol):
    """One tenant's links, one at a time, inside the transaction that gave them."""

    async def claim(self, event_id: str) -> bool:
        """Record ``event_id`` as applied; False when it already was."""
        ...

    async def lock_link(self, link_id: str) -> LinkState | None:
        """The link's current state, locked; None when the resolver never saw it."""
        ...

    async def fields(self, link_id: str) -> dict[str, FieldRecord]: ...

    async def save(self, link: LinkState, fields: Mapping[str, FieldRecord]) -> None:
        """Write the link's state and the given fields' (the others stay as they are)."""
        ...

    async def sent(self, link_id: str, version: int) -> tuple[str, dict[str, Value]] | None:
        """The operation and pending values of the write sent at ``version``; None when none was."""
        ...

    async def store_crm_id(self, link: LinkState, record_id: str) -> None:
        """Tell mapping's link the Salesforce id of a record Duplex created."""
        ...


class Transaction(Protocol):
    """The resolver's state inside one transaction, for a batch of events with tenants mixed.

    Links are locked in (tenant, link) order by every method that locks several, so that two
    batches never wait on each other in a cycle.
    """

    async def claim(self, event_ids: Sequence[EventKey]) -> set[EventKey]:
        """Record events as applied; returns those that were not yet."""
        ...

    async def lock_or_create_links(self, links: Mapping[LinkKey, LinkState]) -> dict[LinkKey, LinkState]:
        """The current state of ``links`` (created from the given ones when new), locked."""
        ...

    async def lock_links(self, keys: Sequence[LinkKey]) -> dict[LinkKey, LinkState]:
        """The existing ones of ``keys``, locked."""
        ...

    async def fields(self, keys: Sequence[LinkKey]) -> dict[LinkKey, dict[str, FieldRecord]]:
        """Every field state of the ``keys`` links (an empty mapping for a link without any)."""
        ...

    async def save(self, links: Mapping[LinkKey, LinkState], fields: Mapping[FieldKey, FieldRecord]) -> None:
        """Write the links' and the given fields' states."""
        ...

    async def record_sent(self, sent: Sequence[SentWrite]) -> None:
        """Remember write commands sent, to settle their outcomes by version."""
        ...

    async def log(self, rows: Sequence[LogRow]) -> None:
        """Append sync log rows."""
        ...

    async def holding(self, pairs: Collection[tuple[str, str]]) -> set[HoldKey]:
        """Which ways of these (tenant, object pair)s hold their outputs: those paused, and those
        resumed whose held outputs are not all released yet (later ones queue behind them)."""
        ...

    async def hold(self, outputs: Sequence[HeldOutput]) -> None:
        """Keep ``outputs``, in this order, until their hold is released."""
        ...

    def tenant(self, tenant_id: str) -> TenantLinks:
        """One tenant's links in this transaction."""
        ...


class Session(Protocol):
    """What one batch of events works with from start to end (see the module doc)."""

    async def mapping(self, tenant_id: str, version: int) -> StoredConfig | None:
        """Version ``version`` of the tenant's configuration; None when it was never stored."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...


class Store(Protocol):
    def session(self) -> AbstractAsyncContextManager[Session]: ...

"""What the resolver needs of its state, as it needs it; :mod:`repository` keeps it in PostgreSQL.

A batch of events is handled in one :class:`Session` (one database connection): the mapping
versions its events name are looked up first, then everything it reads and writes happens in one
:meth:`Session.transaction`, which commits when its block exits and rolls back when it raises.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from services.common.pauses import Way, stopped
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
# (tenant, object pair)
PairKey = tuple[str, str]
# A change held undecided: its (tenant, object pair), its event id and the encoded ChangeMapped
HeldInput = tuple[PairKey, str, bytes]


@dataclass(frozen=True)
class Holds:
    """What pauses hold of some (tenant, object pair)s (:mod:`services.conflict_resolver.holding`)."""

    # The pairs whose changes are kept undecided in ``held_inputs``.
    inputs: frozenset[PairKey] = frozenset()
    # The pairs and ways whose outputs are kept in ``held_outputs`` instead of being published.
    outputs: frozenset[HoldKey] = frozenset()


def holds_of(
    paused: Collection[HoldKey], inputs_waiting: Collection[PairKey], outputs_waiting: Collection[HoldKey]
) -> Holds:
    """What is held, from the ways ``paused`` (a pause of every pair already counted for each pair)
    and the pairs and ways that still have held inputs or outputs waiting to be released.

    A pair paused both ways has nothing to send, so deciding its changes now would only cost what
    a live change costs for outputs that wait anyway: its changes wait instead. A pair still
    releasing held changes keeps holding its new ones (even resumed): decided now they would
    overtake older changes of the same records. Outputs are held likewise, per way.
    """
    ways: dict[PairKey, set[Way]] = {}
    for tenant, pair, way in paused:
        ways.setdefault((tenant, pair), set()).add(way)
    inputs = {key for key, paused_ways in ways.items() if stopped(paused_ways)} | set(inputs_waiting)
    return Holds(inputs=frozenset(inputs), outputs=frozenset(paused) | frozenset(outputs_waiting))


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

    async def holding(self, pairs: Collection[PairKey]) -> Holds:
        """What is held of these (tenant, object pair)s (:func:`holds_of`): the changes of those
        paused both ways or still releasing held changes, the outputs of the ways paused or still
        releasing held outputs."""
        ...

    async def hold(self, outputs: Sequence[HeldOutput]) -> None:
        """Keep ``outputs``, in this order, until their hold is released."""
        ...

    async def hold_inputs(self, inputs: Sequence[HeldInput]) -> None:
        """Keep ``inputs``, in this order, undecided until their pair is released; one held or
        decided already (the same tenant and event id) is not kept again."""
        ...

    async def held_inputs(self, tenant_id: str, object_pair: str, limit: int) -> list[tuple[int, bytes]] | None:
        """The oldest ``limit`` changes held for the pair (id, encoded ChangeMapped), oldest first,
        once this transaction has the pair's release to itself: None when another has it, none
        when the pair is paused both ways (again)."""
        ...

    async def release_inputs(self, ids: Sequence[int]) -> None:
        """Forget held changes, decided in this transaction."""
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

"""What the mapper needs of its storage, as protocols.

The PostgreSQL implementations are :mod:`services.mapping.repository` (links, held references,
the sync log), :mod:`services.mapping.describes` and
:class:`services.common.config_provider.TenantConfigs`; ``app.py`` wires them in. The unit
tests' in-memory ones are in ``tests/unit/mapping/fakes.py``.

Every method is handed the connection of the batch it serves, and runs in that connection's
transaction when one is open: what a batch writes commits, or rolls back, with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.common.change import Side
from services.common.db import Connection
from services.common.sync_log import Entry
from services.common.tenant_config import StoredConfig
from services.mapping.links import Link
from services.mapping.translate import CrmFieldInfo

# (tenant, pair, side, record id on that side)
RecordRef = tuple[str, str, Side, str]


@dataclass(frozen=True)
class HeldReference:
    """A reference field whose target had no link on both sides yet (rule "hold"), kept to be
    sent on its own once the target is linked."""

    link_id: str
    field: str
    object_pair: str
    origin_side: Side
    target_pair: str
    target_record_id: str
    source_event_id: str
    origin_commit_at: datetime
    origin_client: str
    mapping_version: int


class ConcurrentLinkError(Exception):
    """Another transaction created one of the batch's new links first; the batch must run again
    (it then finds that link)."""


class BatchLinks(Protocol):
    """The links and held references as one batch's transaction sees them.

    Creating a link is race-free: a record that another transaction linked meanwhile gets that
    link, or :meth:`flush` raises :class:`ConcurrentLinkError`.
    """

    async def prefetch(self, refs: Sequence[RecordRef]) -> None:
        """Read ahead what the batch will look up about these records."""

    async def find(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link | None: ...

    async def get(self, tenant_id: str, link_id: str) -> Link | None: ...

    async def find_by_external_id(self, tenant_id: str, pair: str, external_id: str) -> Link | None: ...

    async def create(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link:
        """The link of a record seen for the first time (or the one a concurrent insert made)."""

    async def adopt(self, tenant_id: str, pair: str, side: Side, record_id: str, link_id: str) -> Link:
        """The link ``link_id`` for a record Duplex created for it, made now if it does not exist."""

    async def bind(self, link: Link, side: Side, record_id: str) -> Link | None:
        """Fill in ``link``'s id on ``side``; None if it already holds another id there."""

    async def repoint(self, link: Link, pair: str, crm_record_id: str) -> Link:
        """Move ``link`` to another Salesforce record (and perhaps pair): conversion or merge."""

    async def retire(self, link: Link, merged_into: str) -> None:
        """Stop syncing ``link`` (it lost to ``merged_into``); its app record is kept."""

    async def outside_filter(self, link: Link) -> frozenset[Side]:
        """The sides whose filter conditions ``link``'s record stopped meeting (and has not met again)."""

    async def set_outside_filter(self, link: Link, side: Side, outside: bool) -> None:
        """Record that ``link``'s record stopped meeting ``side``'s conditions (True), or meets them again."""

    async def other_side_ids(
        self, tenant_id: str, side: Side, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """For (pair, id on ``side``) pairs: the linked record's id on the other side, where known."""

    async def hold(self, held: HeldReference, tenant_id: str) -> None:
        """Keep ``held``, unless a newer value of its field is held already."""

    async def unhold(self, tenant_id: str, link_id: str, fields: Iterable[str]) -> None:
        """A newer value of these fields arrived: an older held value must not be released after it."""

    async def take_released(self, target: Link) -> list[HeldReference]:
        """Held references to ``target`` that can now be resolved (it has ids on both sides); removed."""

    async def flush(self) -> None:
        """Send what was deferred; raises :class:`ConcurrentLinkError`."""


OpenLinks = Callable[[Connection], BatchLinks]
"""The links of one batch's transaction on ``conn`` (a batch's repository keeps what it read)."""


class Configs(Protocol):
    async def current(self, conn: Connection, tenant_id: str) -> StoredConfig | None:
        """The tenant's current configuration (at most a few seconds old), None when it has none."""


class Describes(Protocol):
    async def crm_fields(self, conn: Connection, tenant_id: str, crm_object: str) -> Mapping[str, CrmFieldInfo] | None:
        """What Salesforce's describe says about ``crm_object``'s fields, None when it was not described."""

    def described_at(self, tenant_id: str, crm_object: str) -> datetime | None:
        """When the describe ``crm_fields`` last answered with was taken."""


class SyncLog(Protocol):
    async def record(self, db: Connection, entry: Entry) -> None:
        """Append one row to the sync log."""

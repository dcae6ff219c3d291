"""The mapper's input and output in domain terms; :mod:`services.mapping.contract` reads them from
RecordChanged and writes them as ChangeMapped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common.change import ChangeKind, Side
from services.mapping.links import Link
from services.mapping.translate import Dropped, MappedField


@dataclass(frozen=True)
class Unreadable:
    """An input event that breaks the contract, with what could be read of it for the sync log."""

    event_id: str
    tenant_id: str
    record_id: str
    reason: str


@dataclass(frozen=True)
class MappedEvent:
    """One change on its link in both sides' terms (a ChangeMapped event): a mapped change, or a
    held reference released once its target was linked."""

    event_id: str
    link: Link
    mapping_version: int
    side: Side
    kind: ChangeKind
    at: datetime
    origin_client: str
    source_event_id: str
    fields: tuple[MappedField, ...]
    dropped: tuple[Dropped, ...] = ()

"""A record change in domain terms (its protobuf form is translated in :mod:`services.common.contract`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from services.common.values import Value


class Side(enum.StrEnum):
    """Which side of the sync a change comes from or a value goes to."""

    APP = "app"
    CRM = "crm"

    @property
    def other(self) -> Side:
        return Side.CRM if self is Side.APP else Side.APP


class ChangeKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNDELETE = "undelete"
    GAP = "gap"
    SNAPSHOT = "snapshot"

    @property
    def carries_full_record(self) -> bool:
        """Creates, undeletes and snapshots send every known field; updates only the changed ones."""
        return self in {ChangeKind.CREATE, ChangeKind.UNDELETE, ChangeKind.SNAPSHOT}


@dataclass(frozen=True)
class Change:
    """One record changed on one side."""

    event_id: str
    tenant_id: str
    side: Side
    object_type: str
    record_id: str
    kind: ChangeKind
    fields: Mapping[str, Value]
    at: datetime
    changed: frozenset[str] = frozenset()
    nulled: frozenset[str] = frozenset()
    origin_client: str = ""
    external_id: str = ""
    transaction_key: str = ""
    sequence: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    def was_changed(self, name: str) -> bool:
        """Whether ``name`` is part of this change (case-insensitively, as Salesforce names are)."""
        if self.kind.carries_full_record:
            return True
        lowered = name.lower()
        return any(n.lower() == lowered for n in self.changed | self.nulled)


class InvalidChangeError(ValueError):
    """A RecordChanged that breaks the contract (unknown side or kind, missing ids)."""

"""What Salesforce's describe says about each tenant's objects, as cdc-ingest stores it
(``crm_object_fields``): cached, and re-checked with one cheap query every few seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.db import Connection
from services.mapping.translate import CrmFieldInfo


@dataclass(frozen=True)
class _Describe:
    fields: Mapping[str, CrmFieldInfo] | None
    described_at: datetime | None
    checked_at: float


def parse_describe(fields: Any) -> dict[str, CrmFieldInfo]:
    """``crm_object_fields.fields`` (JSON text or its decoded form) as what translate checks.

    Keys a describe leaves out take the permissive default: a missing flag must not make a field
    read-only, and a missing length, precision or digits must not reject values.
    """
    data = json.loads(fields) if isinstance(fields, str | bytes) else fields
    infos: dict[str, CrmFieldInfo] = {}
    for name, entry in (data or {}).items():
        if not isinstance(entry, Mapping):
            continue
        infos[str(name)] = CrmFieldInfo(
            name=str(name),
            updateable=bool(entry.get("updateable", True)),
            createable=bool(entry.get("createable", True)),
            calculated=bool(entry.get("calculated", False)),
            length=int(entry.get("length") or 0),
            type=str(entry.get("type") or ""),
            precision=int(entry.get("precision") or 0),
            scale=int(entry.get("scale") or 0),
            digits=int(entry.get("digits") or 0),
        )
    return infos


# The (possibly large) fields document only travels when described_at moved. Salesforce object
# names are case-insensitive, and the config's spelling need not be describe's.
_DESCRIBE_QUERY = (
    "SELECT described_at, CASE WHEN described_at IS DISTINCT FROM $3 THEN fields END AS fields"
    " FROM crm_object_fields WHERE tenant_id = $1 AND lower(object_name) = lower($2)"
    " ORDER BY described_at DESC LIMIT 1"
)


class CrmDescribes:
    """Each tenant's describe of each Salesforce object, at most ``check_seconds`` behind the database."""

    def __init__(self, check_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._check_seconds = check_seconds
        self._clock = clock
        self._describes: dict[tuple[str, str], _Describe] = {}

    def described_at(self, tenant_id: str, crm_object: str) -> datetime | None:
        """When the describe :meth:`crm_fields` last answered with was taken (None: none known)."""
        entry = self._describes.get((tenant_id, crm_object))
        return entry.described_at if entry is not None else None

    async def crm_fields(self, conn: Connection, tenant_id: str, crm_object: str) -> Mapping[str, CrmFieldInfo] | None:
        """What Salesforce's describe says about ``crm_object``'s fields, or None when cdc-ingest
        has not described it for this tenant (then no describe checks apply)."""
        now = self._clock()
        key = (tenant_id, crm_object)
        entry = self._describes.get(key)
        if entry is not None and now - entry.checked_at < self._check_seconds:
            return entry.fields
        row = await conn.fetchrow(_DESCRIBE_QUERY, tenant_id, crm_object, entry.described_at if entry else None)
        if row is None:
            self._describes[key] = _Describe(None, None, now)
            return None
        # No fields in the row: described_at has not moved since the entry was read.
        unchanged = row["fields"] is None and entry is not None
        fields = entry.fields if unchanged and entry is not None else parse_describe(row["fields"])
        self._describes[key] = _Describe(fields, row["described_at"], now)
        return fields

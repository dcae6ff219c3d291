"""Versioned schemas of both sides in PostgreSQL (``deploy/sql/0019_schemas.sql``).

A Salesforce object gets a new version only when its describe (or its CDC selection) changed, with
the changes against the version before; the object's summary for mapping (``crm_object_fields``)
is rewritten in the same transaction, so mapping sees a deleted field as soon as the refresh
commits. App objects get a version per declaration that changed anything.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.db import Connection
from services.common.schema import (
    AppObject,
    CrmObject,
    app_object_document,
    field_summary,
    object_document,
    stored_app_object,
    stored_object,
)
from services.common.schema_drift import SchemaChange, object_changes


@dataclass(frozen=True)
class DescribedObject:
    name: str
    version: int
    described_at: datetime
    # None once the object left the org.
    object: CrmObject | None
    cdc_selected: bool | None
    changes: tuple[SchemaChange, ...]


@dataclass(frozen=True)
class DeclaredAppObject:
    object: AppObject
    version: int
    declared_by: str
    declared_at: datetime


def _described(row: Mapping[str, Any]) -> DescribedObject:
    describe = row["describe"]
    return DescribedObject(
        name=row["object_name"],
        version=row["version"],
        described_at=row["described_at"],
        object=None if describe is None else stored_object(json.loads(describe)),
        cdc_selected=row["cdc_selected"],
        changes=tuple(SchemaChange.from_document(c) for c in json.loads(row["changes"])),
    )


_LATEST = (
    "SELECT DISTINCT ON (object_name) object_name, version, described_at, describe, cdc_selected, changes"
    " FROM crm_schema_objects WHERE tenant_id = $1 {where} ORDER BY object_name, version DESC"
)


async def latest_objects(
    db: Connection, tenant_id: str, names: Iterable[str] | None = None
) -> dict[str, DescribedObject]:
    """The newest version of each described object (of ``names`` only, case-insensitively, if given)."""
    if names is None:
        rows = await db.fetch(_LATEST.format(where=""), tenant_id)
    else:
        lowered = sorted({n.lower() for n in names})
        rows = await db.fetch(_LATEST.format(where="AND lower(object_name) = ANY($2::text[])"), tenant_id, lowered)
    return {row["object_name"]: _described(row) for row in rows}


@dataclass(frozen=True)
class ObjectState:
    """The newest describe of an object, as health needs it (:func:`described_objects`)."""

    name: str
    described_at: datetime
    # None once the object left the org.
    object: CrmObject | None
    cdc_selected: bool | None


# A described object's version never changes once stored; with its time it names one describe even
# across a tenant deleted and made again. Parsed once each (parsing them took a quarter of the overview).
_Describe = tuple[str, str, int, datetime]
_PARSED: OrderedDict[_Describe, CrmObject | None] = OrderedDict()
_PARSED_SIZE = 4096


async def described_objects(
    conn: Connection, objects: Mapping[str, Collection[str]]
) -> dict[str, dict[str, ObjectState]]:
    """The newest describe of each tenant's objects named (any case): by tenant, then by lowercase name.

    :func:`latest_objects` for many tenants at once, as health and the console's overview read
    them: without the changes, and each version's describe parsed once per process."""
    wanted = sorted({(tenant, name.lower()) for tenant, names in objects.items() for name in names})
    rows = await conn.fetch(
        "SELECT DISTINCT ON (o.tenant_id, lower(o.object_name)) o.tenant_id, o.object_name, o.version,"
        " o.described_at, o.cdc_selected FROM crm_schema_objects o"
        " JOIN unnest($1::text[], $2::text[]) AS w (tenant_id, name)"
        " ON o.tenant_id = w.tenant_id AND lower(o.object_name) = w.name"
        " ORDER BY o.tenant_id, lower(o.object_name), o.version DESC",
        [t for t, _ in wanted],
        [n for _, n in wanted],
    )
    keys: list[_Describe] = [(r["tenant_id"], r["object_name"], r["version"], r["described_at"]) for r in rows]
    missing = [key for key in keys if key not in _PARSED]
    if missing:
        described = await conn.fetch(
            "SELECT o.tenant_id, o.object_name, o.version, o.describe FROM crm_schema_objects o"
            " JOIN unnest($1::text[], $2::text[], $3::int[]) AS w (tenant_id, name, version)"
            " ON o.tenant_id = w.tenant_id AND o.object_name = w.name AND o.version = w.version",
            [k[0] for k in missing],
            [k[1] for k in missing],
            [k[2] for k in missing],
        )
        documents = {(d["tenant_id"], d["object_name"], d["version"]): d["describe"] for d in described}
        for key in missing:
            if key[:3] in documents:  # not when its tenant was deleted in between
                document = documents[key[:3]]
                _PARSED[key] = None if document is None else stored_object(_json_object(document))
    found: dict[str, dict[str, ObjectState]] = {}
    for r, key in zip(rows, keys, strict=True):
        if key not in _PARSED:
            continue
        _PARSED.move_to_end(key)
        found.setdefault(r["tenant_id"], {})[r["object_name"].lower()] = ObjectState(
            name=r["object_name"], described_at=r["described_at"], object=_PARSED[key], cdc_selected=r["cdc_selected"]
        )
    while len(_PARSED) > _PARSED_SIZE:
        _PARSED.popitem(last=False)
    return found


async def object_history(db: Connection, tenant_id: str, name: str) -> list[DescribedObject]:
    """Every version of ``name``, newest first."""
    rows = await db.fetch(
        "SELECT object_name, version, described_at, describe, cdc_selected, changes FROM crm_schema_objects"
        " WHERE tenant_id = $1 AND lower(object_name) = lower($2) ORDER BY version DESC",
        tenant_id,
        name,
    )
    return [_described(row) for row in rows]


async def save_described(
    db: Connection,
    tenant_id: str,
    name: str,
    obj: CrmObject | None,
    *,
    cdc_selected: bool | None,
    describe_fields: Sequence[Mapping[str, Any]] = (),
) -> list[SchemaChange]:
    """Store ``obj`` as ``name``'s newest version if it differs from the last; the changes, [] if none.

    ``describe_fields`` (describe's raw ``fields``) rewrite mapping's summary of the object.
    """
    async with db.transaction():
        # One refresh at a time per object, so two never both take the next version.
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('crm_schema:' || $1 || ':' || lower($2)))", tenant_id, name
        )
        previous = await latest_objects(db, tenant_id, [name])
        last = next(iter(previous.values()), None)
        if last is None:
            changes: list[SchemaChange] = []
        else:
            # A describe without the CDC selection (cdc-ingest's at a worker's start) keeps the last known.
            if cdc_selected is None:
                cdc_selected = last.cdc_selected
            changes = object_changes(name, last.object, obj, cdc_before=last.cdc_selected, cdc_after=cdc_selected)
            if not changes and cdc_selected == last.cdc_selected and last.object == obj:
                await _summarise(db, tenant_id, name, describe_fields)
                return []
        await db.execute(
            "INSERT INTO crm_schema_objects (tenant_id, object_name, version, describe, cdc_selected, changes)"
            " VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)",
            tenant_id,
            name,
            1 if last is None else last.version + 1,
            None if obj is None else json.dumps(object_document(obj)),
            cdc_selected,
            json.dumps([c.document() for c in changes]),
        )
        await _summarise(db, tenant_id, name, describe_fields)
        return changes


async def _summarise(db: Connection, tenant_id: str, name: str, describe_fields: Sequence[Mapping[str, Any]]) -> None:
    if not describe_fields:
        return
    await db.execute(
        "INSERT INTO crm_object_fields (tenant_id, object_name, fields, described_at) VALUES ($1, $2, $3::jsonb, now())"
        " ON CONFLICT (tenant_id, object_name) DO UPDATE SET fields = EXCLUDED.fields, described_at = now()",
        tenant_id,
        name,
        json.dumps(field_summary(describe_fields)),
    )


async def save_catalog(db: Connection, tenant_id: str, objects: Sequence[Mapping[str, Any]]) -> None:
    await db.execute(
        "INSERT INTO crm_schema_catalogs (tenant_id, objects, listed_at) VALUES ($1, $2::jsonb, now())"
        " ON CONFLICT (tenant_id) DO UPDATE SET objects = EXCLUDED.objects, listed_at = now()",
        tenant_id,
        json.dumps(list(objects)),
    )


async def catalog(db: Connection, tenant_id: str) -> tuple[list[dict[str, Any]], datetime] | None:
    """The org's object list as last read, and when; None before the first refresh."""
    row = await db.fetchrow("SELECT objects, listed_at FROM crm_schema_catalogs WHERE tenant_id = $1", tenant_id)
    return None if row is None else (json.loads(row["objects"]), row["listed_at"])


async def last_refresh(db: Connection, tenant_id: str) -> datetime | None:
    return await db.fetchval("SELECT listed_at FROM crm_schema_catalogs WHERE tenant_id = $1", tenant_id)  # type: ignore[no-any-return]


async def declare_app_object(db: Connection, tenant_id: str, obj: AppObject, actor: str) -> DeclaredAppObject:
    """Store ``obj`` as a new version unless it equals the newest one; the version that holds it."""
    async with db.transaction():
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('app_schema:' || $1 || ':' || $2))", tenant_id, obj.name
        )
        current = await app_object(db, tenant_id, obj.name)
        if current is not None and current.object == obj:
            return current
        row = await db.fetchrow(
            "INSERT INTO app_schema_objects (tenant_id, object_name, version, fields, declared_by)"
            " VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING version, declared_by, declared_at",
            tenant_id,
            obj.name,
            1 if current is None else current.version + 1,
            json.dumps(app_object_document(obj)["fields"]),
            actor,
        )
        assert row is not None
        return DeclaredAppObject(obj, row["version"], row["declared_by"], row["declared_at"])


def _declared(row: Mapping[str, Any]) -> DeclaredAppObject:
    obj = stored_app_object({"name": row["object_name"], "fields": json.loads(row["fields"])})
    return DeclaredAppObject(obj, row["version"], row["declared_by"], row["declared_at"])


async def app_object(db: Connection, tenant_id: str, name: str) -> DeclaredAppObject | None:
    row = await db.fetchrow(
        "SELECT object_name, version, fields, declared_by, declared_at FROM app_schema_objects"
        " WHERE tenant_id = $1 AND object_name = $2 ORDER BY version DESC LIMIT 1",
        tenant_id,
        name,
    )
    return None if row is None else _declared(row)


async def app_objects(db: Connection, tenant_id: str) -> dict[str, DeclaredAppObject]:
    rows = await db.fetch(
        "SELECT DISTINCT ON (object_name) object_name, version, fields, declared_by, declared_at"
        " FROM app_schema_objects WHERE tenant_id = $1 ORDER BY object_name, version DESC",
        tenant_id,
    )
    return {row["object_name"]: _declared(row) for row in rows}


def _json_object(value: Any) -> dict[str, Any]:
    # asyncpg hands jsonb over as text unless a codec is set on the connection.
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}

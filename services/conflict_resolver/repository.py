"""The resolver's tables (``deploy/sql/0006_conflict_resolver.sql``) over one asyncpg connection.

Every method runs inside the handler's transaction. :meth:`ResolverRepository.claim` comes first:
a second delivery of an event already applied finds its row and changes nothing; a concurrent
one waits on the row's lock until the first commits (then skips) or rolls back (then applies).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.common.values import Value
from services.conflict_resolver.resolve import FieldRecord, LinkState
from services.conflict_resolver.state_codec import decode_state, decode_value, encode_state, encode_value

_LINK_COLUMNS = "link_id, object_pair, external_id, app_record_id, crm_record_id, version, app_deleted, crm_deleted"


def _json(data: Any) -> Any:
    # Without a registered jsonb codec asyncpg hands jsonb over as text.
    return json.loads(data) if isinstance(data, str) else data


def _link(row: Any) -> LinkState:
    return LinkState(
        link_id=row["link_id"],
        object_pair=row["object_pair"],
        external_id=row["external_id"],
        app_record_id=row["app_record_id"],
        crm_record_id=row["crm_record_id"],
        version=row["version"],
        app_deleted=row["app_deleted"],
        crm_deleted=row["crm_deleted"],
    )


class ResolverRepository:
    def __init__(self, conn: Any, tenant_id: str) -> None:
        self._conn = conn
        self._tenant = tenant_id

    async def claim(self, event_id: str) -> bool:
        """Record ``event_id`` as applied; False when it already was."""
        row = await self._conn.fetchrow(
            "INSERT INTO processed_events (tenant_id, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            self._tenant,
            event_id,
        )
        return row is not None

    async def lock_link(self, link_id: str) -> LinkState | None:
        row = await self._conn.fetchrow(
            f"SELECT {_LINK_COLUMNS} FROM link_states WHERE tenant_id = $1 AND link_id = $2 FOR UPDATE",
            self._tenant,
            link_id,
        )
        return None if row is None else _link(row)

    async def lock_or_create_link(self, link: LinkState) -> LinkState:
        await self._conn.execute(
            "INSERT INTO link_states (tenant_id, link_id, object_pair, external_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            self._tenant,
            link.link_id,
            link.object_pair,
            link.external_id,
        )
        locked = await self.lock_link(link.link_id)
        assert locked is not None  # inserted above or already there; rows are never deleted here
        return locked

    async def fields(self, link_id: str) -> dict[str, FieldRecord]:
        rows = await self._conn.fetch(
            "SELECT field, state FROM field_states WHERE tenant_id = $1 AND link_id = $2", self._tenant, link_id
        )
        records = {}
        for row in rows:
            state, crm_form = decode_state(_json(row["state"]))
            records[row["field"]] = FieldRecord(state, crm_form)
        return records

    async def save(self, link: LinkState, fields: Mapping[str, FieldRecord]) -> None:
        await self._conn.execute(
            "UPDATE link_states SET object_pair = $3, app_record_id = $4, crm_record_id = $5, version = $6,"
            " app_deleted = $7, crm_deleted = $8, updated_at = now() WHERE tenant_id = $1 AND link_id = $2",
            self._tenant,
            link.link_id,
            link.object_pair,
            link.app_record_id,
            link.crm_record_id,
            link.version,
            link.app_deleted,
            link.crm_deleted,
        )
        if fields:
            await self._conn.executemany(
                "INSERT INTO field_states (tenant_id, link_id, field, state) VALUES ($1, $2, $3, $4::jsonb)"
                " ON CONFLICT (tenant_id, link_id, field) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                [
                    (self._tenant, link.link_id, name, json.dumps(encode_state(record.state, record.crm_form)))
                    for name, record in fields.items()
                ],
            )

    async def record_sent(self, link_id: str, version: int, operation: str, pending: Mapping[str, Value]) -> None:
        await self._conn.execute(
            "INSERT INTO sent_writes (tenant_id, link_id, version, operation, fields)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT DO NOTHING",
            self._tenant,
            link_id,
            version,
            operation,
            json.dumps({name: encode_value(value) for name, value in pending.items()}),
        )

    async def sent(self, link_id: str, version: int) -> tuple[str, dict[str, Value]] | None:
        row = await self._conn.fetchrow(
            "SELECT operation, fields FROM sent_writes WHERE tenant_id = $1 AND link_id = $2 AND version = $3",
            self._tenant,
            link_id,
            version,
        )
        if row is None:
            return None
        return row["operation"], {name: decode_value(v) for name, v in _json(row["fields"]).items()}

    async def store_crm_id(self, link: LinkState, record_id: str) -> None:
        """The writer created the Salesforce record: remember its id here and on mapping's link.

        mapping then resolves references to the record at once instead of waiting for its CDC
        event; only an empty id is filled in, so a later re-point by mapping is never undone.
        """
        await self._conn.execute(
            "UPDATE links SET crm_record_id = $3, updated_at = now()"
            " WHERE tenant_id = $1 AND link_id = $2 AND crm_record_id IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM links o WHERE o.tenant_id = $1 AND o.object_pair = links.object_pair"
            " AND o.crm_record_id = $3)",
            self._tenant,
            link.link_id,
            record_id,
        )

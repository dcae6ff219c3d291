"""The links table and held references (``deploy/sql/0005_mapping.sql``), over one asyncpg connection.

Every method runs inside the caller's transaction. Link creation is race-free without locks:
inserts use ON CONFLICT DO NOTHING on the unique indexes and then read what won, and binds only
fill an id that is still empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.change import Side
from services.mapping.links import Link, external_id_for, link_id_for

_COLUMNS = "tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id, merged_into"
_SIDE_COLUMN = {Side.APP: "app_record_id", Side.CRM: "crm_record_id"}
# A link id is derived from its founding record; if that id is taken (the founder was re-pointed
# by a Lead conversion and the same record id shows up again), derive the next candidate.
_MAX_ID_ATTEMPTS = 5


def _link(row: Any) -> Link:
    return Link(
        tenant_id=row["tenant_id"],
        object_pair=row["object_pair"],
        link_id=row["link_id"],
        app_record_id=row["app_record_id"],
        crm_record_id=row["crm_record_id"],
        external_id=row["external_id"],
        merged_into=row["merged_into"],
    )


@dataclass(frozen=True)
class HeldReference:
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


class LinkRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def find(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link | None:
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM links WHERE tenant_id = $1 AND object_pair = $2 AND {_SIDE_COLUMN[side]} = $3",
            tenant_id,
            pair,
            record_id,
        )
        return None if row is None else _link(row)

    async def get(self, tenant_id: str, link_id: str) -> Link | None:
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM links WHERE tenant_id = $1 AND link_id = $2", tenant_id, link_id
        )
        return None if row is None else _link(row)

    async def find_by_external_id(self, tenant_id: str, pair: str, external_id: str) -> Link | None:
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM links WHERE tenant_id = $1 AND object_pair = $2 AND external_id = $3",
            tenant_id,
            pair,
            external_id,
        )
        return None if row is None else _link(row)

    async def create(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link:
        """The link of a record seen for the first time (or the one a concurrent insert made)."""
        for attempt in range(_MAX_ID_ATTEMPTS):
            seed = record_id if attempt == 0 else f"{record_id}#{attempt}"
            link_id = link_id_for(tenant_id, pair, side, seed)
            await self._conn.execute(
                f"INSERT INTO links (tenant_id, object_pair, link_id, {_SIDE_COLUMN[side]}, external_id)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                tenant_id,
                pair,
                link_id,
                record_id,
                external_id_for(link_id),
            )
            found = await self.find(tenant_id, pair, side, record_id)
            if found is not None:
                return found
        raise RuntimeError(f"no free link id for {tenant_id}/{pair}/{side}/{record_id}")

    async def bind(self, link: Link, side: Side, record_id: str) -> Link | None:
        """Fill in ``link``'s id on ``side``; None if it already holds another id there."""
        column = _SIDE_COLUMN[side]
        row = await self._conn.fetchrow(
            f"UPDATE links SET {column} = $3, updated_at = now()"
            f" WHERE tenant_id = $1 AND link_id = $2 AND ({column} IS NULL OR {column} = $3)"
            f" RETURNING {_COLUMNS}",
            link.tenant_id,
            link.link_id,
            record_id,
        )
        return None if row is None else _link(row)

    async def repoint(self, link: Link, pair: str, crm_record_id: str) -> Link:
        """Move ``link`` to another Salesforce record (and perhaps pair): conversion or merge."""
        row = await self._conn.fetchrow(
            f"UPDATE links SET object_pair = $3, crm_record_id = $4, updated_at = now()"
            f" WHERE tenant_id = $1 AND link_id = $2 RETURNING {_COLUMNS}",
            link.tenant_id,
            link.link_id,
            pair,
            crm_record_id,
        )
        return _link(row)

    async def retire(self, link: Link, merged_into: str) -> None:
        """``link`` lost a merge to a record that has its own link: stop syncing it, keep the app record."""
        await self._conn.execute(
            "UPDATE links SET crm_record_id = NULL, merged_into = $3, updated_at = now()"
            " WHERE tenant_id = $1 AND link_id = $2",
            link.tenant_id,
            link.link_id,
            merged_into,
        )

    async def other_side_ids(
        self, tenant_id: str, side: Side, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """For (pair, id on ``side``) pairs: the linked record's id on the other side, where known."""
        keys = sorted(set(wanted))
        if not keys:
            return {}
        this, other = _SIDE_COLUMN[side], _SIDE_COLUMN[side.other]
        rows = await self._conn.fetch(
            f"SELECT l.object_pair, l.{this} AS here, l.{other} AS there FROM links l"
            f" JOIN unnest($2::text[], $3::text[]) AS w(pair, rid) ON l.object_pair = w.pair AND l.{this} = w.rid"
            f" WHERE l.tenant_id = $1 AND l.{other} IS NOT NULL",
            tenant_id,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(row["object_pair"], row["here"]): row["there"] for row in rows}

    async def hold(self, held: HeldReference, tenant_id: str) -> None:
        await self._conn.execute(
            "INSERT INTO held_references (tenant_id, link_id, field, object_pair, origin_side, target_pair,"
            " target_record_id, source_event_id, origin_commit_at, origin_client, mapping_version)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (tenant_id, link_id, field) DO UPDATE SET target_pair = EXCLUDED.target_pair,"
            " target_record_id = EXCLUDED.target_record_id, source_event_id = EXCLUDED.source_event_id,"
            " origin_side = EXCLUDED.origin_side, origin_commit_at = EXCLUDED.origin_commit_at,"
            " origin_client = EXCLUDED.origin_client, mapping_version = EXCLUDED.mapping_version,"
            " held_at = now() WHERE held_references.origin_commit_at <= EXCLUDED.origin_commit_at",
            tenant_id,
            held.link_id,
            held.field,
            held.object_pair,
            str(held.origin_side),
            held.target_pair,
            held.target_record_id,
            held.source_event_id,
            held.origin_commit_at,
            held.origin_client,
            held.mapping_version,
        )

    async def unhold(self, tenant_id: str, link_id: str, fields: Iterable[str]) -> None:
        """A newer value of these fields arrived: an older held value must not be released after it."""
        names = list(fields)
        if names:
            await self._conn.execute(
                "DELETE FROM held_references WHERE tenant_id = $1 AND link_id = $2 AND field = ANY($3::text[])",
                tenant_id,
                link_id,
                names,
            )

    async def take_released(self, target: Link) -> list[HeldReference]:
        """Held references to ``target`` that can now be resolved (it has ids on both sides); removed."""
        if target.app_record_id is None or target.crm_record_id is None:
            return []
        rows = await self._conn.fetch(
            "DELETE FROM held_references WHERE tenant_id = $1 AND target_pair = $2"
            " AND ((origin_side = 'app' AND target_record_id = $3) OR (origin_side = 'crm' AND target_record_id = $4))"
            " RETURNING *",
            target.tenant_id,
            target.object_pair,
            target.app_record_id,
            target.crm_record_id,
        )
        return [
            HeldReference(
                link_id=row["link_id"],
                field=row["field"],
                object_pair=row["object_pair"],
                origin_side=Side(row["origin_side"]),
                target_pair=row["target_pair"],
                target_record_id=row["target_record_id"],
                source_event_id=row["source_event_id"],
                origin_commit_at=row["origin_commit_at"],
                origin_client=row["origin_client"],
                mapping_version=row["mapping_version"],
            )
            for row in rows
        ]

"""The links table and held references (``deploy/sql/0005_mapping.sql``), and the sync log, over
one asyncpg connection: the PostgreSQL side of :mod:`services.mapping.storage`.

Every method runs inside the caller's transaction. Link creation is race-free without locks:
inserts use ON CONFLICT DO NOTHING on the unique indexes and then read what won, and binds only
fill an id that is still empty.

:class:`BatchLinkRepository` serves a whole batch of changes in one transaction with a few
statements instead of several per change: it reads the links of all the batch's records at once,
answers lookups from what it read (kept up to date with its own writes), and defers the common
writes (new links, releasing newer fields' held values) into one statement each, sent before any
other statement that could observe them and at the end of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from services.common.change import Side
from services.common.db import Connection
from services.mapping.links import Link, external_id_for, link_id_for
from services.mapping.storage import ConcurrentLinkError, HeldReference, RecordRef

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


class LinkRepository:
    def __init__(self, conn: Connection) -> None:
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
            await self._insert(tenant_id, pair, link_id, side, record_id)
            found = await self.find(tenant_id, pair, side, record_id)
            if found is not None:
                return found
            if attempt == 0:
                taken = await self.get(tenant_id, link_id)
                if taken is not None and taken.object_pair == pair and taken.record_id(side) is None:
                    # Adopted (see adopt) by the record Duplex created for this link: this
                    # record founded it, so it joins it.
                    bound = await self.bind(taken, side, record_id)
                    if bound is not None:
                        return bound
        raise RuntimeError(f"no free link id for {tenant_id}/{pair}/{side}/{record_id}")

    async def adopt(self, tenant_id: str, pair: str, side: Side, record_id: str, link_id: str) -> Link:
        """The link ``link_id`` for a record Duplex created for it, made now if it does not exist.

        It can be missing: mapping publishes a new link's ChangeMapped before its transaction
        commits, so a crash in between rolls the row back after the resolver has already had the
        record created on the other side. That record's echo may come back before the founding
        change is redelivered; made under the same id, the link is where the founder then finds it
        (``create``) instead of founding a duplicate.
        """
        await self._insert(tenant_id, pair, link_id, side, record_id)
        found = await self.find(tenant_id, pair, side, record_id)
        if found is not None:
            return found
        # The founder re-created it meanwhile.
        taken = await self.get(tenant_id, link_id)
        if taken is not None and taken.object_pair == pair:
            bound = await self.bind(taken, side, record_id)
            if bound is not None:
                return bound
        return await self.create(tenant_id, pair, side, record_id)

    async def _insert(self, tenant_id: str, pair: str, link_id: str, side: Side, record_id: str) -> None:
        """A new link row holding ``record_id`` on ``side``; nothing if the id or the record is taken."""
        await self._conn.execute(
            f"INSERT INTO links (tenant_id, object_pair, link_id, {_SIDE_COLUMN[side]}, external_id)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            tenant_id,
            pair,
            link_id,
            record_id,
            external_id_for(link_id),
        )

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

    async def outside_filter(self, link: Link) -> frozenset[Side]:
        # The app's and Salesforce's consumers may decide on one record at once: one at a time, so
        # two re-entries (each taking its side's row away) cannot both see the other's row.
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('outside_filter:' || $1 || ':' || $2, 0))",
            link.tenant_id,
            link.link_id,
        )
        rows = await self._conn.fetch(
            "SELECT side FROM outside_filter WHERE tenant_id = $1 AND link_id = $2", link.tenant_id, link.link_id
        )
        return frozenset(Side(row["side"]) for row in rows)

    async def set_outside_filter(self, link: Link, side: Side, outside: bool) -> None:
        query = (
            "INSERT INTO outside_filter (tenant_id, link_id, side) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            if outside
            else "DELETE FROM outside_filter WHERE tenant_id = $1 AND link_id = $2 AND side = $3"
        )
        await self._conn.execute(query, link.tenant_id, link.link_id, str(side))

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


class BatchLinkRepository(LinkRepository):
    """A :class:`LinkRepository` for one batch's transaction (see the module doc).

    Lookups by record (:meth:`find`) and by id (:meth:`get`) are answered from the batch's
    prefetch, misses included; every write of this repository updates those answers. Writes of
    other transactions during the batch are seen as they would be by a change processed at the
    batch's start; the statements that depend on them (binds, conflicting inserts) still check the
    table itself.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._by_record: dict[RecordRef, Link | None] = {}
        self._by_id: dict[tuple[str, str], Link | None] = {}
        self._new: list[Link] = []
        self._unheld: set[tuple[str, str, str]] = set()
        # The id a record's new link would take (its founding id), by record.
        self._candidates: dict[RecordRef, str] = {}

    async def prefetch(self, refs: Sequence[RecordRef]) -> None:
        """Read the links of ``refs``, and whether the ids their new links would take are free."""
        wanted = sorted(set(refs) - self._by_record.keys())
        for side in Side:
            keys = [r for r in wanted if r[2] is side]
            if not keys:
                continue
            rows = await self._conn.fetch(
                f"SELECT {_COLUMNS} FROM links l JOIN unnest($1::text[], $2::text[], $3::text[]) AS w(t, p, r)"
                f" ON l.tenant_id = w.t AND l.object_pair = w.p AND l.{_SIDE_COLUMN[side]} = w.r",
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[3] for k in keys],
            )
            found = {(row["tenant_id"], row["object_pair"], side, row[_SIDE_COLUMN[side]]): _link(row) for row in rows}
            for ref in keys:
                self._remember(found.get(ref))
                self._by_record.setdefault(ref, None)
        # uuid5 is not free: derived once, for create() too.
        self._candidates.update({ref: link_id_for(*ref) for ref in wanted if ref not in self._candidates})
        ids = sorted({(ref[0], self._candidates[ref]) for ref in wanted} - self._by_id.keys())
        if ids:
            rows = await self._conn.fetch(
                f"SELECT {_COLUMNS} FROM links l JOIN unnest($1::text[], $2::text[]) AS w(t, id)"
                " ON l.tenant_id = w.t AND l.link_id = w.id",
                [i[0] for i in ids],
                [i[1] for i in ids],
            )
            for row in rows:
                self._remember(_link(row))
            for key in ids:
                self._by_id.setdefault(key, None)

    async def find(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link | None:
        key = (tenant_id, pair, side, record_id)
        if key not in self._by_record:
            await self.flush()
            self._by_record[key] = await super().find(tenant_id, pair, side, record_id)
        return self._by_record[key]

    async def get(self, tenant_id: str, link_id: str) -> Link | None:
        key = (tenant_id, link_id)
        if key not in self._by_id:
            await self.flush()
            self._by_id[key] = await super().get(tenant_id, link_id)
        return self._by_id[key]

    async def find_by_external_id(self, tenant_id: str, pair: str, external_id: str) -> Link | None:
        await self.flush()
        return await super().find_by_external_id(tenant_id, pair, external_id)

    async def create(self, tenant_id: str, pair: str, side: Side, record_id: str) -> Link:
        ref = (tenant_id, pair, side, record_id)
        link_id = self._candidates.get(ref) or link_id_for(tenant_id, pair, side, record_id)
        known_new = ref in self._by_record and self._by_record[ref] is None
        if known_new and (tenant_id, link_id) in self._by_id and self._by_id[(tenant_id, link_id)] is None:
            # Known to be new, with its id free: inserted with the batch's other new links.
            link = Link(
                tenant_id=tenant_id,
                object_pair=pair,
                link_id=link_id,
                app_record_id=record_id if side is Side.APP else None,
                crm_record_id=record_id if side is Side.CRM else None,
                external_id=external_id_for(link_id),
            )
            self._new.append(link)
            self._remember(link)
            return link
        await self.flush()
        # The plain repository reads back what each insert made from the table itself, not from
        # this one's answers (which know the record had no link).
        link = await LinkRepository(self._conn).create(tenant_id, pair, side, record_id)
        self._forget_id(tenant_id, link.link_id)
        self._remember(link)
        return link

    async def adopt(self, tenant_id: str, pair: str, side: Side, record_id: str, link_id: str) -> Link:
        await self.flush()
        # Read from the table, like create(): this repository's answers predate the insert.
        link = await LinkRepository(self._conn).adopt(tenant_id, pair, side, record_id, link_id)
        self._forget_id(tenant_id, link_id)
        self._remember(link)
        return link

    async def bind(self, link: Link, side: Side, record_id: str) -> Link | None:
        await self.flush()
        bound = await super().bind(link, side, record_id)
        if bound is not None:
            self._replace(link, bound)
        return bound

    async def repoint(self, link: Link, pair: str, crm_record_id: str) -> Link:
        await self.flush()
        moved = await super().repoint(link, pair, crm_record_id)
        self._replace(link, moved)
        return moved

    async def retire(self, link: Link, merged_into: str) -> None:
        await self.flush()
        await super().retire(link, merged_into)
        # Read again when asked: simpler than re-deriving the retired row (it keeps its app id).
        self._forget(link, unlinked=False)

    async def other_side_ids(
        self, tenant_id: str, side: Side, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        # Links still waiting to be inserted have an id on one side only: they cannot answer this.
        return await super().other_side_ids(tenant_id, side, wanted)

    async def hold(self, held: HeldReference, tenant_id: str) -> None:
        await self.flush()
        await super().hold(held, tenant_id)

    async def unhold(self, tenant_id: str, link_id: str, fields: Iterable[str]) -> None:
        # Deleting is idempotent and commutes with other deletes; flush() sends it before any
        # statement that reads or writes held references.
        self._unheld.update((tenant_id, link_id, name) for name in fields)

    async def take_released(self, target: Link) -> list[HeldReference]:
        if target.app_record_id is None or target.crm_record_id is None:
            return []
        await self.flush()
        return await super().take_released(target)

    async def flush(self) -> None:
        """Send the deferred writes. Raises :class:`ConcurrentLinkError` when a new link's row
        turned out to exist already (made by another transaction after the prefetch)."""
        if self._new:
            new, self._new = self._new, []
            inserted = await self._conn.fetch(
                "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
                " ON CONFLICT DO NOTHING RETURNING link_id",
                [n.tenant_id for n in new],
                [n.object_pair for n in new],
                [n.link_id for n in new],
                [n.app_record_id for n in new],
                [n.crm_record_id for n in new],
                [n.external_id for n in new],
            )
            if len(inserted) != len(new):
                raise ConcurrentLinkError(f"{len(new) - len(inserted)} of {len(new)} new links already existed")
        if self._unheld:
            unheld = sorted(self._unheld)
            self._unheld.clear()
            await self._conn.execute(
                "DELETE FROM held_references h USING unnest($1::text[], $2::text[], $3::text[]) AS w(t, l, f)"
                " WHERE h.tenant_id = w.t AND h.link_id = w.l AND h.field = w.f",
                [u[0] for u in unheld],
                [u[1] for u in unheld],
                [u[2] for u in unheld],
            )

    def _remember(self, link: Link | None) -> None:
        if link is None:
            return
        self._by_id[(link.tenant_id, link.link_id)] = link
        for side in Side:
            record_id = link.record_id(side)
            if record_id is not None:
                self._by_record[(link.tenant_id, link.object_pair, side, record_id)] = link

    def _forget(self, link: Link, *, unlinked: bool) -> None:
        """Drop what is known of ``link``; with ``unlinked``, its records are known to have no link
        (they cannot have another one: the unique indexes allowed only this one)."""
        self._by_id.pop((link.tenant_id, link.link_id), None)
        for side in Side:
            record_id = link.record_id(side)
            if record_id is None:
                continue
            key = (link.tenant_id, link.object_pair, side, record_id)
            if unlinked:
                self._by_record[key] = None
            else:
                self._by_record.pop(key, None)

    def _forget_id(self, tenant_id: str, link_id: str) -> None:
        """Drop a row this repository may know in an older state (before a bind by the table)."""
        known = self._by_id.get((tenant_id, link_id))
        if known is not None:
            self._forget(known, unlinked=False)

    def _replace(self, old: Link, new: Link) -> None:
        # The new row's ids are remembered again just after; those it lost belong to no link.
        self._forget(old, unlinked=True)
        self._remember(new)

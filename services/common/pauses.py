"""Pauses as the control plane and the conflict-resolver see them (``deploy/sql/0017_pauses.sql``).

A pause stops one direction of a tenant's syncing, for one object pair or for every pair
(:data:`EVERY_PAIR`), until it is resumed. The resolver honours it where both directions leave
Duplex's decisions: what it would send the paused way is held in PostgreSQL and released in order
on resume (:mod:`services.conflict_resolver.holding`).

Resuming a pair ends that pair's pause, not a tenant-wide one over it; resuming the tenant ends all.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

EVERY_PAIR: Final = "*"


class Way(StrEnum):
    """Where a paused output would have gone."""

    TO_CRM = "to_crm"
    TO_APP = "to_app"


@dataclass(frozen=True)
class Pause:
    object_pair: str
    way: Way
    reason: str | None
    actor: str
    paused_at: datetime

    def covers(self, object_pair: str, way: Way) -> bool:
        return self.way is way and self.object_pair in (object_pair, EVERY_PAIR)


@dataclass(frozen=True)
class Held:
    """What a hold keeps: its outputs, and since when."""

    object_pair: str
    way: Way
    outputs: int
    oldest: datetime


@dataclass(frozen=True)
class HeldInputs:
    """The changes a pair paused both ways keeps undecided: how many, and since when."""

    object_pair: str
    changes: int
    oldest: datetime


def stopped(paused: Collection[Way]) -> bool:
    """Whether a pair paused these ways syncs nothing at all (so its changes wait undecided)."""
    return set(Way) <= set(paused)


class Executor(Protocol):
    async def execute(self, query: str, *args: Any) -> Any: ...
    async def fetch(self, query: str, *args: Any) -> Any: ...


async def pause(
    db: Executor, tenant_id: str, pairs: Iterable[str], ways: Collection[Way], actor: str, reason: str | None
) -> None:
    """Pause ``ways`` of ``pairs`` (an existing pause stays as it was, with its reason and time)."""
    keys = [(pair, str(way)) for pair in pairs for way in ways]
    await db.execute(
        "INSERT INTO sync_pauses (tenant_id, object_pair, direction, actor, reason)"
        " SELECT $1, k.pair, k.way, $4, $5 FROM unnest($2::text[], $3::text[]) AS k(pair, way)"
        " ON CONFLICT DO NOTHING",
        tenant_id,
        [k[0] for k in keys],
        [k[1] for k in keys],
        actor,
        reason,
    )


async def resume(db: Executor, tenant_id: str, pairs: Iterable[str] | None, ways: Collection[Way]) -> None:
    """End the pauses of ``ways`` of ``pairs`` (every pause of those ways when None; those not
    paused are left as they are)."""
    await db.execute(
        "DELETE FROM sync_pauses WHERE tenant_id = $1 AND ($2::text[] IS NULL OR object_pair = ANY($2::text[]))"
        " AND direction = ANY($3::text[])",
        tenant_id,
        None if pairs is None else list(pairs),
        [str(w) for w in ways],
    )


async def pauses_of(db: Executor, tenant_id: str) -> list[Pause]:
    rows = await db.fetch(
        "SELECT object_pair, direction, reason, actor, paused_at FROM sync_pauses WHERE tenant_id = $1"
        " ORDER BY object_pair, direction",
        tenant_id,
    )
    return [
        Pause(
            object_pair=r["object_pair"],
            way=Way(r["direction"]),
            reason=r["reason"],
            actor=r["actor"],
            paused_at=r["paused_at"],
        )
        for r in rows
    ]


async def held_of(db: Executor, tenant_id: str) -> list[Held]:
    """The tenant's holds with outputs still in them (paused, or resumed and being released)."""
    rows = await db.fetch(
        "SELECT object_pair, direction, count(*) AS outputs, min(held_at) AS oldest FROM held_outputs"
        " WHERE tenant_id = $1 GROUP BY object_pair, direction ORDER BY object_pair, direction",
        tenant_id,
    )
    return [
        Held(object_pair=r["object_pair"], way=Way(r["direction"]), outputs=r["outputs"], oldest=r["oldest"])
        for r in rows
    ]


async def held_inputs_of(db: Executor, tenant_id: str) -> list[HeldInputs]:
    """The tenant's pairs with changes held undecided (paused both ways, or resumed and being
    released); their outputs, once decided, may be held too (:func:`held_of`)."""
    rows = await db.fetch(
        "SELECT object_pair, count(*) AS changes, min(held_at) AS oldest FROM held_inputs"
        " WHERE tenant_id = $1 GROUP BY object_pair ORDER BY object_pair",
        tenant_id,
    )
    return [HeldInputs(object_pair=r["object_pair"], changes=r["changes"], oldest=r["oldest"]) for r in rows]

"""Releasing what a pause held, once it ends, in the order it was held.

While one way of an object pair is paused (:mod:`services.common.pauses`), every Salesforce write
command or app update the resolver decides for it is stored in ``held_outputs`` in the transaction
that decided it (:meth:`~services.conflict_resolver.store.Transaction.hold`), instead of being
published. The change was applied and its input's offset moves on, so a paused tenant holds no
partition back from the tenants sharing it, and what it holds is as durable as the decision.

While a pair is paused both ways, nothing it decides could leave, so its changes are not decided at
all: they are stored as they came, in ``held_inputs``, in the transaction of their batch
(:meth:`~services.conflict_resolver.store.Transaction.hold_inputs`), which costs a paused tenant one
insert per batch instead of a decision per change. Once either way is resumed, :func:`release_inputs`
has them decided page by page in id order through the live path
(:meth:`~services.conflict_resolver.handlers.Resolver.release_held`), each page's decisions, outputs
(published, or held for a way still paused) and the deletion of its rows in one transaction, and
until the last row is gone the pair's later changes are held behind them.

After a resume, :func:`release` publishes a hold's outputs page by page in id order (acked before
their rows are deleted), and until the last row is gone, later outputs of that pair and direction
are held behind them, so no record's outputs overtake each other. A crash between the ack and the
delete publishes a page again: the same commands and updates with the same ids, which the writer
and the app already take at most once. One replica at a time releases a hold (an advisory lock),
and a pause set again meanwhile stops the release before the next page (for held changes: a pause of
both ways again).

Outcomes of writes (WriteSettled) are never held, even for a pair paused both ways. They settle
writes sent before the pause (by version, against sent_writes) and touch only what those writes left
pending, or record the id of a record Duplex created. Settled now, before the held changes of the
same link are decided, they give the order the live system has whenever the writer answers before
the next change arrives: outcomes and changes come on different topics, so the policies take either
order already. Held instead, the changes decided on release would not know the Salesforce id of a
record created just before the pause, nor that a pending value was refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from google.protobuf.message import Message

from services.common.db import Connection, Pool
from services.common.errors import RecordTooLargeError
from services.common.pauses import EVERY_PAIR, Way
from services.common.sync_log import record as log_event
from services.conflict_resolver.contract import held_output
from services.conflict_resolver.store import HoldKey

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[tuple[Message, bytes]]], Awaitable[None]]
# Decides up to a page of the changes held for (tenant, object pair) at a time until none is left,
# the pair is paused both ways again or another replica releases it; returns how many it decided.
DecideHeld = Callable[[str, str, int], Awaitable[int]]
# Outputs published per transaction.
PAGE = 500

_UNPAUSED = (
    "NOT EXISTS (SELECT 1 FROM sync_pauses p WHERE p.tenant_id = h.tenant_id AND p.direction = h.direction"
    " AND p.object_pair IN (h.object_pair, $1))"
)


def paused_both_ways(tenant: str, pair: str) -> str:
    """SQL: whether the pair (the SQL expressions ``tenant`` and ``pair``) is paused both ways, by
    pauses of the pair or of every pair ($1), as :func:`services.common.pauses.stopped` says."""
    return (
        f"((SELECT count(DISTINCT p.direction) FROM sync_pauses p WHERE p.tenant_id = {tenant}"
        f" AND p.object_pair IN ({pair}, $1)) = {len(Way)})"
    )


# The pairs with changes held and not paused both ways, one index probe each (as _HOLDS).
_INPUT_HOLDS = f"""
WITH RECURSIVE holds AS (
    (SELECT tenant_id, object_pair FROM held_inputs ORDER BY tenant_id, object_pair LIMIT 1)
    UNION ALL
    SELECT n.tenant_id, n.object_pair FROM holds
    CROSS JOIN LATERAL (
        SELECT tenant_id, object_pair FROM held_inputs i
        WHERE (i.tenant_id, i.object_pair) > (holds.tenant_id, holds.object_pair)
        ORDER BY tenant_id, object_pair LIMIT 1
    ) n
)
SELECT tenant_id, object_pair FROM holds h WHERE NOT {paused_both_ways("h.tenant_id", "h.object_pair")}
"""

# The holds there are, one index probe each (a loose index scan): a long pause can hold millions of
# rows, and DISTINCT over them would read every one each second.
_HOLDS = f"""
WITH RECURSIVE holds AS (
    (SELECT tenant_id, object_pair, direction FROM held_outputs ORDER BY tenant_id, object_pair, direction LIMIT 1)
    UNION ALL
    SELECT n.tenant_id, n.object_pair, n.direction FROM holds
    CROSS JOIN LATERAL (
        SELECT tenant_id, object_pair, direction FROM held_outputs o
        WHERE (o.tenant_id, o.object_pair, o.direction) > (holds.tenant_id, holds.object_pair, holds.direction)
        ORDER BY tenant_id, object_pair, direction LIMIT 1
    ) n
)
SELECT tenant_id, object_pair, direction FROM holds h WHERE {_UNPAUSED}
"""


async def release(pool: Pool, publish: Mapping[Way, Publish], service: str, *, page: int = PAGE) -> int:
    """Publish every output whose pause has ended, oldest first per hold; how many were published.
    A hold that fails (its topic refused, say) is left for the next round without holding up the others."""
    async with pool.acquire() as conn:
        total = 0
        for row in await conn.fetch(_HOLDS, EVERY_PAIR):
            hold = (row["tenant_id"], row["object_pair"], Way(row["direction"]))
            try:
                total += await _release_hold(conn, hold, publish[hold[2]], service, page)
            except Exception as exc:  # Kafka's, or one output's
                log.warning(
                    "releasing a hold failed; trying again",
                    extra={"tenant_id": hold[0], "pair": hold[1], "way": str(hold[2]), "error": str(exc)},
                )
        return total


async def _release_hold(conn: Connection, hold: HoldKey, publish: Publish, service: str, page: int) -> int:
    tenant, pair, way = hold
    released = 0
    while True:
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", f"held_outputs/{tenant}/{pair}/{way}"
            ):
                return released  # another replica is releasing it
            rows = await conn.fetch(
                f"SELECT id, record_key, message FROM held_outputs h WHERE tenant_id = $2 AND object_pair = $3"
                f" AND direction = $4 AND {_UNPAUSED} ORDER BY id LIMIT $5",
                EVERY_PAIR,
                tenant,
                pair,
                str(way),
                page,
            )
            outputs = [(held_output(way, r["message"]), bytes(r["record_key"])) for r in rows]
            ids = [r["id"] for r in rows]
            try:
                await publish(outputs)
            except RecordTooLargeError as error:
                # Over the limit of the topic it was held for: say so, drop it, release the rest.
                ids = ids[: error.index + 1]
                await publish(outputs[: error.index])
                await log_event(
                    conn,
                    tenant_id=tenant,
                    service=service,
                    event="held.refused",
                    code="RECORD_TOO_LARGE",
                    message=f"an output held for {pair} ({way}) is {error.reason}; it was dropped",
                )
            await conn.execute("DELETE FROM held_outputs WHERE id = ANY($1::bigint[])", ids)
        released += len(ids)
        if len(rows) < page:
            if released:
                extra = {"tenant_id": tenant, "pair": pair, "way": str(way), "outputs": released}
                log.info("held outputs released", extra=extra)
            return released


async def release_inputs(pool: Pool, decide: DecideHeld, *, page: int = PAGE) -> int:
    """Have every pair's held changes decided once it is no longer paused both ways; how many were.
    A pair that fails is left for the next round without holding up the others."""
    async with pool.acquire() as conn:
        pairs = [(row["tenant_id"], row["object_pair"]) for row in await conn.fetch(_INPUT_HOLDS, EVERY_PAIR)]
    total = 0
    for tenant, pair in pairs:
        try:
            decided = await decide(tenant, pair, page)
        except Exception as exc:  # PostgreSQL's or Kafka's
            log.warning(
                "releasing held changes failed; trying again",
                extra={"tenant_id": tenant, "pair": pair, "error": str(exc) or type(exc).__name__},
            )
            continue
        if decided:
            log.info("held changes released", extra={"tenant_id": tenant, "pair": pair, "changes": decided})
        total += decided
    return total


async def releasing(
    pool: Pool,
    publish: Mapping[Way, Publish],
    service: str,
    every_seconds: float,
    decide: DecideHeld,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Release ended holds now and every ``every_seconds`` until cancelled. A round that fails (the
    database or Kafka away) is logged and left to the next: its rows are still there.

    Held outputs go first: changes decided after them would otherwise have their outputs held
    behind them (the order is right either way), only to be released a second time."""
    while True:
        try:
            await release(pool, publish, service)
            await release_inputs(pool, decide)
        except Exception as exc:  # PostgreSQL's, the network's or Kafka's
            log.warning("releasing held outputs failed; trying again", extra={"error": str(exc) or type(exc).__name__})
        await sleep(every_seconds)

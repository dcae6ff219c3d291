"""Forgetting applied event ids that can never come again.

The resolver records each input event it applied (``processed_events``), so that a redelivery
changes nothing. Kafka keeps an event for its topic's retention; once that has passed (and a margin
for a consumer still holding one) nothing can deliver it again, and its row only takes space:
without pruning the table grows by a row per change for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from services.common.db import Pool
from services.common.topics import Topic, TopicTable

log = logging.getLogger(__name__)

INPUTS: Final = (Topic.MAPPED_CHANGES, Topic.WRITE_OUTCOMES)
MARGIN: Final = timedelta(days=1)
# Rows deleted per statement: short transactions, so pruning never holds up the resolver's batches.
BATCH: Final = 10_000


def keep_for(table: TopicTable) -> timedelta | None:
    """How long an applied event id is kept: its input topics' longest retention plus a margin;
    None (for ever) when one of them keeps events for ever."""
    retention = [table.topics[topic].retention_ms for topic in INPUTS]
    if any(ms < 0 for ms in retention):
        return None
    return timedelta(milliseconds=max(retention)) + MARGIN


async def prune(pool: Pool, applied_before: datetime, *, batch: int = BATCH) -> int:
    """Delete the ids applied before ``applied_before``, ``batch`` rows a statement; how many."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            deleted: int = await conn.fetchval(
                "WITH gone AS (DELETE FROM processed_events WHERE (tenant_id, event_id) IN"
                " (SELECT tenant_id, event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)"
                " RETURNING 1) SELECT count(*) FROM gone",
                applied_before,
                batch,
            )
        total += deleted
        if deleted < batch:
            return total


async def pruning(
    pool: Pool,
    keep: timedelta,
    every_seconds: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Prune now and every ``every_seconds`` until cancelled. A round that fails (the database is
    away) is logged and left to the next: nothing depends on it but disk space."""
    while True:
        cutoff = now() - keep
        try:
            deleted = await prune(pool, cutoff)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("pruning applied event ids failed; trying again later", extra={"error": str(exc)})
        else:
            if deleted:
                log.info("applied event ids pruned", extra={"rows": deleted, "applied_before": cutoff.isoformat()})
        await sleep(every_seconds)

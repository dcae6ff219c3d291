"""Keeping the sync log to its retention.

The log is partitioned by day, UTC (``deploy/sql/0018_sync_log_by_day.sql``). :func:`maintain`
creates the partitions of today and the week ahead, so that rows never land in the default
partition while it runs at least weekly, and drops the partitions older than the retention: a
dropped day costs no row-by-row delete, no vacuum and no bloat. Each step is its own short
transaction with a lock timeout: dropping a partition needs a moment's exclusive lock on the log,
and waiting behind a long search would queue every service's inserts behind it; a step that
times out is tried again on the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from services.common.db import Connection, Pool

log = logging.getLogger(__name__)

AHEAD_DAYS: Final = 7
LOCK_TIMEOUT: Final = "5s"


@dataclass(frozen=True)
class Maintained:
    created: int
    dropped: int


async def maintain(pool: Pool, retention_days: int, today: date) -> Maintained:
    """Create the partitions of ``today`` and the week after it; drop those of the days before
    ``today - retention_days`` (and the default partition's rows from then)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await _exclusive(conn)
            created: int = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE made) FROM"
                " (SELECT sync_log_ensure_day($1::date + n) AS made FROM generate_series(0, $2) AS n) AS days",
                today,
                AHEAD_DAYS,
            )
        async with conn.transaction():
            await _exclusive(conn)
            dropped: int = await conn.fetchval(
                "SELECT sync_log_drop_before($1::date)", today - timedelta(days=retention_days)
            )
    return Maintained(created, dropped)


async def _exclusive(conn: Connection) -> None:
    """One replica's maintenance at a time (two would both create a day, or take the log's and the
    default partition's locks in opposite orders), each waiting on a lock no longer than LOCK_TIMEOUT."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('sync_log_retention', 0))")


async def keeping(
    pool: Pool,
    retention_days: int,
    every_seconds: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """:func:`maintain` now and every ``every_seconds`` until cancelled; a round that fails (the
    database away, a lock not granted in time) is logged and left to the next."""
    while True:
        try:
            done = await maintain(pool, retention_days, now().date())
        except Exception as exc:  # PostgreSQL's or the network's
            log.warning("sync log maintenance failed; trying again later", extra={"error": str(exc)})
        else:
            if done.created or done.dropped:
                log.info(
                    "sync log partitions maintained",
                    extra={"created": done.created, "dropped": done.dropped, "retention_days": retention_days},
                )
        await sleep(every_seconds)

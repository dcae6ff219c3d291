"""The sync log by day against the real database: the migration keeps every row and id, partitions
are made a week ahead, rows of a day without one are moved in when it is made, and retention drops
whole days (and the default partition's old rows)."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from services.common.db import MIGRATIONS_DIR, create_pool, migrate
from services.common.settings import PostgresSettings
from services.common.sync_log_retention import AHEAD_DAYS, Maintained, maintain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TODAY = datetime.now(UTC).date()


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), tzinfo=UTC)


async def _log(conn: asyncpg.Connection, at: datetime, event: str) -> int:
    row_id: int = await conn.fetchval(
        "INSERT INTO sync_log (at, tenant_id, service, event) VALUES ($1, 'acme', 'test', $2) RETURNING id", at, event
    )
    return row_id


async def _partitions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'sync_log'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in rows]


def _name(day: date) -> str:
    return f"sync_log_p{day:%Y%m%d}"


async def test_the_migration_keeps_every_row_and_id(fresh_database: str, tmp_path: Path) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0018":
            shutil.copy(path, before)
    await migrate(fresh_database, before)
    conn = await asyncpg.connect(fresh_database)
    try:
        old = [await _log(conn, noon(TODAY - timedelta(days=d)), f"old {d}") for d in (90, 3, 0)]
        await migrate(fresh_database)
        rows = await conn.fetch("SELECT id, event, tableoid::regclass::text AS part FROM sync_log ORDER BY id")
        assert [(r["id"], r["event"]) for r in rows] == list(zip(old, ["old 90", "old 3", "old 0"], strict=True))
        # Each day it held rows of got a partition, and so did today and the week ahead.
        assert [r["part"] for r in rows] == [_name(TODAY - timedelta(days=d)) for d in (90, 3, 0)]
        partitions = await _partitions(conn)
        assert all(_name(TODAY + timedelta(days=n)) in partitions for n in range(AHEAD_DAYS + 1))
        # Ids go on from the last.
        assert await _log(conn, noon(TODAY), "new") > old[-1]
    finally:
        await conn.close()


async def test_partitions_are_made_ahead_filled_from_the_default_and_dropped_past_retention(
    fresh_database: str,
) -> None:
    await migrate(fresh_database)
    settings = PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)
    async with create_pool(settings) as pool, pool.acquire() as conn:
        # A day far ahead has no partition yet: its row waits in the default partition ...
        ahead = TODAY + timedelta(days=20)
        waiting = await _log(conn, noon(ahead), "ahead")
        assert await conn.fetchval("SELECT tableoid::regclass::text FROM sync_log WHERE id = $1", waiting) == (
            "sync_log_default"
        )
        # ... and moves into the day's partition once maintenance reaches that day.
        done = await maintain(pool, 30, ahead - timedelta(days=AHEAD_DAYS))
        assert done.created == AHEAD_DAYS + 1
        assert await conn.fetchval("SELECT tableoid::regclass::text FROM sync_log WHERE id = $1", waiting) == _name(
            ahead
        )

        # Days 35 and 29 ago get partitions; a row 40 days ago stays in the default partition.
        await maintain(pool, 365, TODAY - timedelta(days=35))
        kept = await _log(conn, noon(TODAY - timedelta(days=29)), "29 days ago")
        await _log(conn, noon(TODAY - timedelta(days=35)), "35 days ago")
        await _log(conn, noon(TODAY - timedelta(days=40)), "40 days ago")
        assert _name(TODAY - timedelta(days=35)) in await _partitions(conn)

        done = await maintain(pool, 30, TODAY)
        assert done.dropped == 5  # 35 .. 31 days ago
        events = [r["event"] for r in await conn.fetch("SELECT event FROM sync_log ORDER BY at")]
        assert events == ["29 days ago", "ahead"]
        partitions = await _partitions(conn)
        assert _name(TODAY - timedelta(days=31)) not in partitions
        assert _name(TODAY - timedelta(days=30)) in partitions
        assert await conn.fetchval("SELECT id FROM sync_log WHERE event = '29 days ago'") == kept
        # Nothing more to do on the same day.
        assert await maintain(pool, 30, TODAY) == Maintained(created=0, dropped=0)

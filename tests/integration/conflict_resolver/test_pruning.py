"""Applied event ids are forgotten once their input topics can no longer redeliver them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from services.common.db import create_pool, migrate
from services.common.settings import PostgresSettings
from services.common.topics import Topic, load_topic_table
from services.conflict_resolver.pruning import keep_for, prune, pruning

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_ids_are_kept_for_the_input_topics_retention_and_a_day() -> None:
    table = load_topic_table()
    assert keep_for(table) == timedelta(days=8)  # mapped-changes and write-outcomes keep 7 days
    kept = table.topics[Topic.MAPPED_CHANGES].model_copy(update={"retention_ms": -1})
    forever = table.model_copy(update={"topics": {**table.topics, Topic.MAPPED_CHANGES: kept}})
    assert keep_for(forever) is None


async def test_pruning_deletes_in_batches_what_is_older_than_the_cutoff(fresh_database: str) -> None:
    await migrate(fresh_database)
    async with create_pool(PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)) as pool:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO processed_events (tenant_id, event_id, processed_at)"
                " SELECT 'acme', 'old-' || g, $1::timestamptz - g * interval '1 second'"
                " FROM generate_series(1, 2500) g",
                NOW - timedelta(days=9),
            )
            await conn.execute(
                "INSERT INTO processed_events (tenant_id, event_id, processed_at)"
                " SELECT 'acme', 'recent-' || g, $1 FROM generate_series(1, 100) g",
                NOW - timedelta(days=7),
            )
        assert await prune(pool, NOW - timedelta(days=8), batch=1000) == 2500
        assert await prune(pool, NOW - timedelta(days=8), batch=1000) == 0
        async with pool.acquire() as conn:
            left = await conn.fetch("SELECT event_id FROM processed_events ORDER BY event_id")
        assert [r["event_id"] for r in left] == sorted(f"recent-{g}" for g in range(1, 101))


async def test_the_pruning_loop_outlives_a_failed_round(fresh_database: str, caplog: pytest.LogCaptureFixture) -> None:
    await migrate(fresh_database)
    async with create_pool(PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)) as pool:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO processed_events (tenant_id, event_id, processed_at) VALUES ('acme', 'old', $1)",
                NOW - timedelta(days=30),
            )
            await conn.execute("ALTER TABLE processed_events RENAME TO processed_events_away")
        rounds: list[float] = []
        renamed_back = asyncio.Event()

        async def sleep(seconds: float) -> None:
            rounds.append(seconds)
            if len(rounds) == 1:  # the first round failed: the table comes back before the second
                async with pool.acquire() as conn:
                    await conn.execute("ALTER TABLE processed_events_away RENAME TO processed_events")
            elif len(rounds) == 2:
                renamed_back.set()
                await asyncio.Event().wait()  # parked until cancelled

        with caplog.at_level(logging.INFO, logger="services.conflict_resolver.pruning"):
            task = asyncio.create_task(pruning(pool, timedelta(days=8), 3600, sleep=sleep, now=lambda: NOW))
            await asyncio.wait_for(renamed_back.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM processed_events") == 0
    assert rounds == [3600, 3600]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["pruning applied event ids failed; trying again later", "applied event ids pruned"]

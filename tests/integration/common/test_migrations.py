"""The migration runner against a real PostgreSQL, each test on its own empty database."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import pytest

from services.common.db import MigrationError, load_migrations, migrate

pytestmark = pytest.mark.integration

FIRST = """
CREATE TABLE widgets (id integer PRIMARY KEY, label text NOT NULL);
INSERT INTO widgets VALUES (1, 'first');
"""
SECOND = "ALTER TABLE widgets ADD COLUMN colour text;"


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def table_exists(dsn: str, name: str) -> bool:
    rows = await fetch(dsn, f"SELECT to_regclass('public.{name}') IS NOT NULL AS present")
    return bool(rows[0]["present"])


async def test_applies_each_file_once_in_order_and_records_it(fresh_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "sql", {"0002_colour.sql": SECOND, "0001_widgets.sql": FIRST})

    applied = await migrate(fresh_database, migrations)

    assert applied == ["0001_widgets.sql", "0002_colour.sql"]
    rows = await fetch(fresh_database, "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY 1")
    assert [(row["version"], row["name"]) for row in rows] == [(1, "widgets"), (2, "colour")]
    assert rows[0]["checksum"] == hashlib.sha256(FIRST.encode()).hexdigest()
    assert all(row["applied_at"] is not None for row in rows)
    columns = await fetch(
        fresh_database, "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'"
    )
    assert {row["column_name"] for row in columns} == {"id", "label", "colour"}


async def test_a_second_run_does_nothing(fresh_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "sql", {"0001_widgets.sql": FIRST})
    await migrate(fresh_database, migrations)

    assert await migrate(fresh_database, migrations) == []
    assert len(await fetch(fresh_database, "SELECT * FROM widgets")) == 1


async def test_new_files_are_applied_on_a_later_run(fresh_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "sql", {"0001_widgets.sql": FIRST})
    await migrate(fresh_database, migrations)
    write(migrations, {"0002_colour.sql": SECOND})

    assert await migrate(fresh_database, migrations) == ["0002_colour.sql"]


async def test_concurrent_runs_apply_everything_exactly_once(fresh_database: str, tmp_path: Path) -> None:
    # The sleep holds the first runner inside the lock while the other four queue on it.
    slow_first = "SELECT pg_sleep(0.3);\n" + FIRST
    migrations = write(tmp_path / "sql", {"0001_widgets.sql": slow_first, "0002_colour.sql": SECOND})

    results = await asyncio.gather(*(migrate(fresh_database, migrations) for _ in range(5)))

    assert sorted(name for result in results for name in result) == ["0001_widgets.sql", "0002_colour.sql"]
    assert sum(1 for result in results if result) == 1
    assert len(await fetch(fresh_database, "SELECT * FROM schema_migrations")) == 2
    assert len(await fetch(fresh_database, "SELECT * FROM widgets")) == 1


async def test_a_failing_migration_is_rolled_back_and_not_recorded(fresh_database: str, tmp_path: Path) -> None:
    broken = "CREATE TABLE gadgets (id integer);\nINSERT INTO gadgets VALUES ('not a number');"
    migrations = write(tmp_path / "sql", {"0001_widgets.sql": FIRST, "0002_gadgets.sql": broken})

    with pytest.raises(asyncpg.PostgresError):
        await migrate(fresh_database, migrations)

    assert await table_exists(fresh_database, "widgets")
    assert not await table_exists(fresh_database, "gadgets")
    rows = await fetch(fresh_database, "SELECT version FROM schema_migrations")
    assert [row["version"] for row in rows] == [1]

    write(migrations, {"0002_gadgets.sql": "CREATE TABLE gadgets (id integer);"})
    assert await migrate(fresh_database, migrations) == ["0002_gadgets.sql"]


async def test_an_applied_file_that_changed_is_refused(fresh_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "sql", {"0001_widgets.sql": FIRST})
    await migrate(fresh_database, migrations)
    write(migrations, {"0001_widgets.sql": FIRST + "\n-- an afterthought\n", "0002_colour.sql": SECOND})

    with pytest.raises(MigrationError, match=r"0001_widgets\.sql was changed"):
        await migrate(fresh_database, migrations)

    rows = await fetch(fresh_database, "SELECT version FROM schema_migrations")
    assert [row["version"] for row in rows] == [1]


async def test_a_file_slotted_in_below_an_applied_version_is_refused(fresh_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "sql", {"0002_widgets.sql": FIRST})
    await migrate(fresh_database, migrations)
    write(migrations, {"0001_early.sql": "CREATE TABLE early (id integer);"})

    with pytest.raises(MigrationError, match=r"0001_early\.sql is not applied but version 0002 is"):
        await migrate(fresh_database, migrations)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_.sql"])
def test_badly_named_sql_files_are_rejected(tmp_path: Path, name: str) -> None:
    write(tmp_path, {name: "SELECT 1;"})

    with pytest.raises(MigrationError, match="NNNN_lower_snake_name"):
        load_migrations(tmp_path)


@pytest.mark.unit
def test_two_files_with_one_version_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;", "README.md": "not sql"})

    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path)

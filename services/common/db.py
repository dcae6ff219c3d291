"""PostgreSQL access: a connection pool per process and the schema migration runner.

Migrations are the files ``deploy/sql/NNNN_name.sql`` (shipped inside the installed package). Each
is applied once, in version order, in its own transaction, and recorded in ``schema_migrations``
with its SHA-256, so an edited file that already ran is caught instead of silently diverging
between environments. Replicas may all call :func:`migrate` at start-up: a session advisory lock
serialises them, and every one after the first finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from services.common.package_data import data_path
from services.common.service import Check
from services.common.settings import PostgresSettings

MIGRATIONS_DIR = data_path("sql", "deploy/sql")
# Any fixed 64-bit number works; this one is the first 8 bytes of sha256("duplex.schema_migrations").
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"duplex.schema_migrations").digest()[:8], "big", signed=True)
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

# asyncpg prepares every statement, and PostgreSQL switches a prepared statement to a generic plan
# after five executions. A generic plan is costed for no particular tenant from the statistics of
# that moment, so one planned while a table was nearly empty (a new deployment, a tenant's first
# backfill) or for a small tenant keeps serving a large one (mapping's link lookups kept such a plan
# until migration 0013; with custom plans bench quarantine maps about 20 % more changes a second).
# Planning each execution costs a fraction of a millisecond; the busy paths run once per batch.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """The migration files and the database's record of them disagree, or a file is malformed."""


class Connection(Protocol):
    """What Duplex uses of a database connection (an asyncpg connection, or a test's fake)."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def executemany(self, query: str, args: Any) -> None: ...
    async def fetch(self, query: str, *args: Any) -> Sequence[Any]: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    def transaction(self) -> Any: ...


class Pool(Protocol):
    """What Duplex uses of a connection pool: a connection for the length of a block."""

    def acquire(self) -> AbstractAsyncContextManager[Any]: ...


def database_ready(pool: Pool) -> Check:
    """A readiness check: the database takes a trivial query."""

    async def answers() -> bool:
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception:  # a probe reports; it must not crash the process
            return False
        return True

    return answers


@asynccontextmanager
async def create_pool(settings: PostgresSettings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool for the process's lifetime, closed (waiting for checked-out connections) on exit."""
    pool = await asyncpg.create_pool(
        dsn=settings.dsn.get_secret_value(),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        server_settings=SESSION_SETTINGS,
    )
    try:
        yield pool
    finally:
        await pool.close()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return self.path.name


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``directory``, by version; other files (README, …) are ignored."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            msg = f"{path}: migration files are named NNNN_lower_snake_name.sql"
            raise MigrationError(msg)
        version = int(match["version"])
        if version in migrations:
            msg = f"{path.name} and {migrations[version].file_name} share version {version:04d}"
            raise MigrationError(msg)
        raw = path.read_bytes()
        migrations[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            sql=raw.decode(),
            checksum=hashlib.sha256(raw).hexdigest(),
        )
    return [migrations[version] for version in sorted(migrations)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def _pending(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    """The migrations still to run, after checking the applied ones still match their files."""
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            continue
        name, checksum = recorded
        if name != migration.name or checksum != migration.checksum:
            msg = (
                f"{migration.file_name} was changed after it was applied (recorded as "
                f"{migration.version:04d}_{name}.sql, sha256 {checksum}); add a new migration instead"
            )
            raise MigrationError(msg)
    pending = [m for m in migrations if m.version not in applied]
    newest_applied = max(applied, default=0)
    # A file slotted in below the newest applied version would run after the ones it was
    # meant to precede; running it silently could produce a schema no other environment has.
    for migration in pending:
        if migration.version < newest_applied:
            msg = (
                f"{migration.file_name} is not applied but version {newest_applied:04d} is; "
                "renumber it after the newest applied migration"
            )
            raise MigrationError(msg)
    return pending


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations in ``directory``; return the file names applied, in order.

    Applied versions without a file (a newer release ran here first) are left alone.
    """
    migrations = load_migrations(directory)
    connection = await asyncpg.connect(dsn)
    try:
        # Session-level: held across the per-migration transactions, and released by closing
        # the connection even when a migration fails or the connection breaks.
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(_CREATE_TABLE)
        rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: (row["name"], row["checksum"]) for row in rows}
        done = []
        for migration in _pending(migrations, applied):
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.file_name)
            done.append(migration.file_name)
        return done
    finally:
        await connection.close()

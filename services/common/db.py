"""PostgreSQL access: a connection pool per process and the schema migration runner.

Migrations are the files ``deploy/sql/NNNN_name.sql`` (shipped inside the installed package). Each
is applied once, in version order, in its own transaction, and recorded in ``schema_migrations``
with its SHA-256, so an edited file that already ran is caught instead of silently diverging
between environments. Replicas may all call :func:`migrate` at start-up: a session advisory lock
serialises them, and every one after the first finds nothing left to do.

When the process traces (:func:`services.common.telemetry.tracing_enabled`), every statement run
on a pool's connections becomes a client span named by its first keyword and table
(``SELECT links``), a child of the span current when it ran; never its text or parameters.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from opentelemetry import trace

from services.common.package_data import data_path
from services.common.service import Check
from services.common.settings import PostgresSettings
from services.common.telemetry import tracing_enabled

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
#
# JIT off: PostgreSQL compiles a query once its estimated cost passes jit_above_cost, and a search of
# the day-partitioned sync log is estimated that costly though it returns one page: compiling took
# 220 ms of the console's 370 ms sync-log search by pair (bench console). Duplex runs no query long
# enough to win that back.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan", "jit": "off"}

log = logging.getLogger(__name__)

_tracer = trace.get_tracer(__name__)
_KEYWORD = re.compile(r"^\s*([A-Za-z]+)")
# The first table a statement names: what it reads from, inserts into or updates.
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+(?:ONLY\s+)?([A-Za-z_][A-Za-z0-9_.]*)", re.IGNORECASE)


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
        # Decided once: with tracing off, asyncpg's statements stay free of any logging hook.
        init=_traced_connection if tracing_enabled() else None,
    )
    try:
        yield pool
    finally:
        await pool.close()


@functools.lru_cache(maxsize=1024)
def statement_summary(query: str) -> tuple[str, str | None]:
    """A statement's first keyword (upper-cased) and the first table it names, if any: all of a
    statement a span may carry (its text can hold values, its parameters always do)."""
    keyword = _KEYWORD.match(query)
    table = _TABLE.search(query)
    return (keyword.group(1).upper() if keyword else "SQL"), (table.group(1) if table else None)


async def _traced_connection(connection: asyncpg.Connection) -> None:
    connection.add_query_logger(_statement_span)


def _statement_span(record: Any) -> None:
    # asyncpg calls this soon after the statement, in a copy of the context it ran in: the span
    # gets the parent it ran under, and its measured duration.
    end = time.time_ns()
    operation, table = statement_summary(record.query)
    attributes = {"db.system": "postgresql", "db.operation.name": operation}
    if table is not None:
        attributes["db.collection.name"] = table
    span = _tracer.start_span(
        f"{operation} {table}" if table else operation,
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        start_time=end - int(record.elapsed * 1e9),
    )
    if record.exception is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(record.exception).__name__))
    span.end(end_time=end)


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

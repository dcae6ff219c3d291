"""The local side of the `duplex` CLI: its settings and how it explains database errors."""

from __future__ import annotations

import asyncpg
import pytest

from services.admin.config_store import describe_dsn, explain_database_error
from services.admin.settings import load_settings

pytestmark = pytest.mark.unit


def test_settings_read_env_and_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://env@h/db")
    monkeypatch.setenv("DUPLEX_ACTOR", "alice")
    from_env = load_settings()
    assert from_env.postgres_dsn is not None
    assert from_env.postgres_dsn.get_secret_value() == "postgresql://env@h/db"
    assert from_env.actor == "alice"
    flagged = load_settings("postgresql://flag@h/db")
    assert flagged.postgres_dsn is not None
    assert flagged.postgres_dsn.get_secret_value() == "postgresql://flag@h/db"
    assert "flag@h" not in repr(flagged)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://duplex:hunter2@db.internal:6543/duplex", "db.internal:6543/duplex"),
        ("postgresql://duplex:hunter2@db.internal/duplex", "db.internal/duplex"),
        ("postgresql:///duplex", "localhost/duplex"),
        ("postgresql://u:p@[::1]:99999/x", "the configured DSN"),
    ],
)
def test_describe_dsn_never_shows_credentials(dsn: str, shown: str) -> None:
    assert describe_dsn(dsn) == shown


DSN = "postgresql://duplex:hunter2@db.internal:6543/duplex"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed"),
            "cannot reach the database at db.internal:6543/duplex: [Errno 111] Connect call failed",
        ),
        (TimeoutError(), "cannot reach the database at db.internal:6543/duplex: timed out"),
        (ValueError(f"invalid DSN {DSN}"), "invalid PostgreSQL DSN (expected postgresql://user:password@host:port/db)"),
        (
            asyncpg.UndefinedTableError('relation "tenants" does not exist'),
            'the database at db.internal:6543/duplex has no Duplex schema (relation "tenants" does not exist); '
            "apply the migrations in deploy/sql first",
        ),
    ],
)
def test_database_errors_are_explained_without_the_password(error: BaseException, message: str) -> None:
    explained = str(explain_database_error(error, DSN))
    assert explained == message
    assert "hunter2" not in explained

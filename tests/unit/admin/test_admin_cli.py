"""The `duplex` CLI without a database: validation, exit codes, messages, settings."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from services.admin.cli import app
from services.admin.config_store import describe_dsn, explain_database_error
from services.admin.settings import load_settings

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml"
runner = CliRunner()

BROKEN = SAMPLE.read_text().replace("conflictPolicy: app_wins", "conflictPolicy: app-wins", 1)


def test_validate_sample() -> None:
    result = runner.invoke(app, ["config", "validate", "-f", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "tenant/acme valid (2 object pairs, 22 fields)\n"


def test_validate_reads_stdin() -> None:
    result = runner.invoke(app, ["config", "validate", "-f", "-"], input=SAMPLE.read_text())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tenant/acme valid")


def test_validate_warns_of_an_api_version_newer_than_duplex_knows(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(SAMPLE.read_text().replace('apiVersion: "62.0"', 'apiVersion: "99.0"', 1))
    result = runner.invoke(app, ["config", "validate", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tenant/acme valid")
    warning = f"warning: {path}: spec.salesforce.apiVersion: 99.0 is newer than the latest Salesforce API version"
    assert result.stderr.startswith(warning)


def test_validate_broken_file_exits_1_naming_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(BROKEN)
    result = runner.invoke(app, ["config", "validate", "-f", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: spec.objects[0].fields[3].conflictPolicy: must be one of app_wins, crm_wins, "
        "newest_wins, app_unless_blank, crm_unless_blank (got 'app-wins')\n"
    )


def test_validate_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("apiVersion: duplex.dev/v1\nkind: [Tenant\n")
    result = runner.invoke(app, ["config", "validate", "-f", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: line 3, column 1: invalid YAML: ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "validate", "-f", "/nonexistent/tenant.yaml"], "/nonexistent/tenant.yaml: cannot read:"),
        (["config", "validate"], "Missing option '--filename' / '-f'"),
        (["config", "apply", "-f", str(SAMPLE), "--dsm", "x"], "No such option: --dsm"),
        (["config", "show", "acme", "--version", "0"], "Invalid value for '--version'"),
        (["config", "show", "acme", "-o", "xml"], "Invalid value for '--output'"),
        (["tenant", "list"], "No such command 'tenant'"),
    ],
)
def test_validate_usage_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_apply_rejects_an_invalid_file_before_touching_the_database(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(BROKEN)
    # A DSN nobody can reach: exit 2 would mean apply tried to connect before validating.
    result = runner.invoke(
        app, ["config", "apply", "-f", str(path), "--dsn", "postgresql://u@/x?host=/nonexistent-duplex-socket-dir"]
    )
    assert result.exit_code == 1
    assert "spec.objects[0].fields[3].conflictPolicy" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["config", "apply", "-f", str(SAMPLE)],
        ["config", "show", "acme"],
        ["tenants", "list"],
    ],
)
def test_commands_without_a_database_exit_2(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRES_DSN", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr == "error: no database configured: set POSTGRES_DSN or pass --dsn\n"


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

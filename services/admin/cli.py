"""``duplex``: the admin command line, and ``duplex serve``, the admin HTTP API.

Exit codes: 0 success; 1 the request is invalid (bad configuration or usage, unknown tenant or
version); 2 the database cannot be reached or used. Errors are one line each on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from pydantic import ValidationError

# Not re-exported by typer, which vendors click; pinned in uv.lock.
from typer._click import Context
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from services.admin.api.models import TokenRequest
from services.admin.auth import Role, parse_duration
from services.admin.config_store import (
    DATABASE_ERRORS,
    ConfigStore,
    DatabaseUnavailableError,
    connect,
    explain_database_error,
)
from services.admin.settings import AdminSettings, load_settings
from services.admin.token_store import TokenStore
from services.admin.vault_cli import keys_app
from services.common.backfills import request_backfill
from services.common.db import MigrationError
from services.common.db import migrate as run_migrations
from services.common.settings import KafkaSettings
from services.common.tenant_config import (
    ConfigFileError,
    ConfigInvalidError,
    LoadedDocument,
    StoredConfig,
    parse_config_sources,
    to_document,
)
from services.common.topic_admin import ensure_topics
from services.common.topics import load_topic_table

EXIT_INVALID = 1
EXIT_DATABASE = 2


class _Group(TyperGroup):
    """Usage errors exit 1 like every other invalid request, so 2 always means "database unavailable"."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            exc.exit_code = EXIT_INVALID
            raise

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            exc.exit_code = EXIT_INVALID
            raise


app = typer.Typer(
    name="duplex",
    cls=_Group,
    help="Duplex admin: tenants, their Salesforce sync configuration, the database schema and Kafka topics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate, apply and show tenant configuration.", no_args_is_help=True)
tenants_app = typer.Typer(help="Inspect tenants.", no_args_is_help=True)
topics_app = typer.Typer(help="Provision Kafka topics from the topic table.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Admin API tokens: the first admin token, or any token without going through the API.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(tenants_app, name="tenants")
app.add_typer(topics_app, name="topics")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")


class OutputFormat(StrEnum):
    YAML = "yaml"
    JSON = "json"


class TableFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


Files = Annotated[
    list[str],
    typer.Option(
        "--filename",
        "-f",
        help="YAML file with one or more Tenant documents ('-' reads stdin). Repeatable.",
        show_default=False,
    ),
]
Dsn = Annotated[
    str | None,
    typer.Option("--dsn", help="PostgreSQL DSN; defaults to $POSTGRES_DSN.", show_default=False),
]

T = TypeVar("T")


def _fail(lines: str | list[str] | tuple[str, ...], code: int) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _read_sources(files: list[str]) -> list[tuple[str, str]]:
    sources = []
    for name in files:
        if name == "-":
            sources.append(("<stdin>", sys.stdin.read()))
            continue
        try:
            sources.append((name, Path(name).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            _fail(f"{name}: cannot read: {reason}", EXIT_INVALID)
    return sources


def _load(files: list[str]) -> list[LoadedDocument]:
    try:
        docs = parse_config_sources(_read_sources(files))
    except ConfigFileError as exc:
        _fail(exc.problems, EXIT_INVALID)
    # Warnings never stop a command (an apiVersion newer than Duplex knows is one): they are said once, up front.
    for doc in docs:
        for line in doc.warnings:
            typer.echo(f"warning: {line}", err=True)
    return docs


def _settings(dsn: str | None) -> tuple[AdminSettings, str]:
    settings = load_settings(dsn)
    if settings.postgres_dsn is None:
        _fail("no database configured: set POSTGRES_DSN or pass --dsn", EXIT_DATABASE)
    return settings, settings.postgres_dsn.get_secret_value()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DatabaseUnavailableError as exc:
        _fail(str(exc), EXIT_DATABASE)


@config_app.command("validate")
def validate(files: Files) -> None:
    """Check files without touching the database."""
    for doc in _load(files):
        pairs = doc.config.spec.objects
        fields = sum(len(p.fields) for p in pairs)
        typer.echo(f"tenant/{doc.config.tenant_id} valid ({len(pairs)} object pairs, {fields} fields)")


@config_app.command("apply")
def apply(files: Files, dsn: Dsn = None) -> None:
    """Store each tenant's document as its next version; nothing is written unless every document is valid."""
    docs = _load(files)
    settings, url = _settings(dsn)

    async def run() -> list[str]:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            results = await ConfigStore(conn).apply([d.config for d in docs], settings.actor)
        return [
            f"tenant/{r.tenant_id} {'configured' if r.changed else 'unchanged'} (version {r.version})" for r in results
        ]

    for line in _run(run()):
        typer.echo(line)


@config_app.command("show")
def show(
    tenant: Annotated[str, typer.Argument(help="Tenant name (metadata.name).", show_default=False)],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A stored version (default: current).", show_default=False)
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="Output format.")] = OutputFormat.YAML,
    dsn: Dsn = None,
) -> None:
    """Print a stored configuration; the output can be applied again as it is."""
    settings, url = _settings(dsn)

    async def run() -> StoredConfig | None:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            return await ConfigStore(conn).get(tenant, version)

    try:
        stored = _run(run())
    except ConfigInvalidError as exc:
        # Only possible if the schema tightened after this version was stored.
        _fail(f"tenant/{tenant}: the stored version no longer validates: {exc}", EXIT_INVALID)
    if stored is None:
        which = "no stored configuration" if version is None else f"no version {version}"
        _fail(f"tenant/{tenant}: {which}", EXIT_INVALID)
    document = to_document(stored.config)
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    typer.echo(
        f"# tenant/{stored.tenant_id} version {stored.version}, applied {stored.applied_at.isoformat()}"
        f" by {stored.applied_by}\n# sha256 {stored.sha256}"
    )
    typer.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


@tenants_app.command("list")
def list_tenants(
    output: Annotated[TableFormat, typer.Option("--output", "-o", help="Output format.")] = TableFormat.TABLE,
    dsn: Dsn = None,
) -> None:
    """Every tenant with its current configuration version."""
    settings, url = _settings(dsn)

    async def run() -> list[dict[str, Any]]:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            tenants = await ConfigStore(conn).list_tenants()
        return [
            {
                "name": t.tenant_id,
                "version": t.version,
                "appliedAt": t.applied_at.isoformat() if t.applied_at else None,
                "appliedBy": t.applied_by,
                "createdAt": t.created_at.isoformat(),
            }
            for t in tenants
        ]

    rows = _run(run())
    if output is TableFormat.JSON:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "VERSION", "APPLIED", "APPLIED BY")] + [
        (r["name"], str(r["version"] or "-"), r["appliedAt"] or "-", r["appliedBy"] or "-") for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@app.command("migrate")
def migrate(dsn: Dsn = None) -> None:
    """Apply pending SQL migrations (safe to run from several replicas at once)."""
    _, url = _settings(dsn)

    async def run() -> list[str]:
        try:
            return await run_migrations(url)
        except DATABASE_ERRORS as exc:
            raise explain_database_error(exc, url) from None

    try:
        applied = _run(run())
    except MigrationError as exc:
        _fail(str(exc), EXIT_INVALID)
    typer.echo(f"applied {', '.join(applied)}" if applied else "nothing to apply")


@topics_app.command("apply")
def apply_topics(
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers; defaults to $KAFKA_BOOTSTRAP_SERVERS.")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Physical-name prefix; defaults to $KAFKA_TOPIC_PREFIX.")] = None,
    replication_factor: Annotated[int, typer.Option(min=1, help="3 on a production cluster.")] = 1,
) -> None:
    """Create every topic of the topic table that is missing (partitions, retention, compaction, DLQs)."""
    kafka = KafkaSettings.model_validate(
        {k: v for k, v in {"bootstrap_servers": bootstrap, "topic_prefix": prefix}.items() if v is not None}
    )
    created = asyncio.run(
        ensure_topics(kafka.bootstrap_servers, load_topic_table(), kafka.topic_prefix, replication_factor)
    )
    typer.echo(f"created {', '.join(created)}" if created else "every topic exists")


@app.command("backfill")
def backfill(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    salesforce_object: Annotated[str, typer.Argument(metavar="OBJECT", help="A Salesforce object the tenant syncs.")],
    dsn: Dsn = None,
) -> None:
    """Re-read every record of one object from Salesforce (cdc-ingest starts it within seconds)."""
    settings, url = _settings(dsn)

    async def run() -> str | None:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            stored = await ConfigStore(conn).get(tenant)
            if stored is None:
                return f"tenant '{tenant}' has no configuration"
            configured = {pair.salesforce.object.lower(): pair.salesforce.object for pair in stored.config.spec.objects}
            name = configured.get(salesforce_object.lower())
            if name is None:
                synced = ", ".join(sorted(configured.values())) or "nothing"
                return f"tenant '{tenant}' does not sync {salesforce_object} (it syncs {synced})"
            await request_backfill(conn, tenant, name)
            return None

    problem = _run(run())
    if problem:
        _fail(problem, EXIT_INVALID)
    typer.echo(f"backfill of {salesforce_object} requested for tenant/{tenant}")


@app.command("serve")
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Listen address (default: $DUPLEX_ADMIN_HOST or 127.0.0.1).", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port (default: $DUPLEX_ADMIN_PORT or 8080; 0: a free port).",
            show_default=False,
        ),
    ] = None,
    dsn: Dsn = None,
) -> None:
    """Serve the admin HTTP API (/api/v1, /openapi.json, /healthz, /readyz) until SIGINT or SIGTERM."""
    # Imported here: the other commands need neither FastAPI nor uvicorn, and start faster without them.
    from services.admin.app import run as run_api
    from services.common.service import main as serve_service

    settings = load_settings(dsn, host=host, port=port)
    if settings.postgres_dsn is None:
        _fail("no database configured: set POSTGRES_DSN or pass --dsn", EXIT_DATABASE)
    serve_service(lambda: settings, run_api)


# The flags that set each field of a token request, for error messages.
_TOKEN_FLAGS = {"name": "--name", "role": "--role", "tenants": "--tenant", "expiresIn": "--expires-in"}


@tokens_app.command("create")
def create_token(
    name: Annotated[str, typer.Option("--name", help="What the token is for (shown in the audit log).")],
    role: Annotated[Role, typer.Option("--role", help="viewer reads; operator also controls runs; admin does all.")],
    tenants: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="A tenant it may see (repeatable); omitted: every tenant.", show_default=False),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime: 12h, 30d, 8w; omitted: no expiry.", show_default=False)
    ] = None,
    dsn: Dsn = None,
) -> None:
    """Create an API token and print it (only the token, on stdout) this once; it is stored only as a hash."""
    try:
        request = TokenRequest.model_validate(
            {"name": name, "role": role.value, "tenants": tenants or None, "expiresIn": expires_in}
        )
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            flag = _TOKEN_FLAGS[str(error["loc"][0])]
            # A repeated flag's error names the value, so the user sees which --tenant is wrong.
            where = f"{flag} {error['input']!r}" if len(error["loc"]) > 1 else flag
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        _fail(lines, EXIT_INVALID)
    settings, url = _settings(dsn)

    async def run() -> tuple[str, str]:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            record, token = await TokenStore(conn).create(
                name=request.name,
                role=role,
                tenants=request.tenants,
                lifetime=None if request.expires_in is None else parse_duration(request.expires_in),
                actor=settings.actor,
            )
        scope = "every tenant" if record.tenants is None else "tenants " + ", ".join(record.tenants)
        expiry = "never expires" if record.expires_at is None else f"expires {record.expires_at.isoformat()}"
        return token, f"token/{record.name} created (id {record.id}, {role.value}, {scope}, {expiry}); shown once"

    token, summary = _run(run())
    typer.echo(summary, err=True)
    typer.echo(token)

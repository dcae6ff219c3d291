"""``duplex``: the admin command line.

Everything but local bootstrap goes through the admin API: ``duplex --server URL`` (``DUPLEX_SERVER``,
default http://127.0.0.1:8080) with a token from ``DUPLEX_TOKEN`` or a file only its owner can read
(``--token-file``, ``DUPLEX_TOKEN_FILE``). The audit log records that token's principal. Local
bootstrap talks to the database (and Kafka) itself (``--dsn``, ``POSTGRES_DSN``): ``migrate``, ``topics apply``,
``tokens create --bootstrap``, ``keys rotate`` and ``serve``. ``config validate`` works offline.

Exit codes: 0 success; 1 invalid input or refused (a document that does not validate, a failing
preflight check, a declined prompt); 2 usage (unknown command or option, a bad flag value, a setting
missing); 3 not found or no access (no token, a token the server refuses, a role that may not, a
tenant outside the token's scope); 4 the admin API (for local bootstrap: the database or Kafka)
cannot be reached or failed. Errors are one line each on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import sys
import time
import webbrowser
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from services.admin.api.dead_letters import Acted, ReplayRequest
from services.admin.api.jobs import JobView
from services.admin.api.models import ApiModel, Applied, CreatedToken, SalesforceConnectionView, TokenRequest
from services.admin.api.pauses import PauseRequest, PauseState, ResumeRequest
from services.admin.api.plan import Plan
from services.admin.api.retries import RetryRequest
from services.admin.api.schema import AppSchemaItem, AppSchemaRequest, ChangeItem, WarningItem
from services.admin.api.sync_log import SyncLogEntry
from services.admin.api.tokens import token_view
from services.admin.auth import Role, parse_duration
from services.admin.client import (
    AdminClient,
    ApiProblemError,
    CredentialError,
    ServerUnreachableError,
    credential,
    load_client_settings,
    sends_token_in_clear,
)
from services.admin.config_store import (
    DATABASE_ERRORS,
    DatabaseUnavailableError,
    connect,
    explain_database_error,
)
from services.admin.documents import validate_sources
from services.admin.settings import AdminSettings, load_settings
from services.admin.sync_log_search import STATUSES
from services.admin.token_store import TokenStore
from services.admin.vault_cli import keys_app
from services.common.db import MigrationError
from services.common.db import migrate as run_migrations
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.common.tenant_config import ConfigFileError, LoadedDocument, parse_config_sources, to_document
from services.common.tenant_config.policy import PolicySettings, SalesforcePolicy
from services.common.topic_admin import ensure_topics
from services.common.topics import Topic, TopicTable, load_topic_table, sized

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_NO_ACCESS = 3
EXIT_UNREACHABLE = 4

# How often `connection connect` asks whether the browser has finished.
CONNECT_POLL_SECONDS = 1.0

app = typer.Typer(
    name="duplex",
    help="Duplex admin: tenants and their configuration, API tokens and Salesforce connections through the admin"
    " API; the database schema, Kafka topics, the first admin token and the vault's keys locally.",
    epilog="Exit codes: 0 done; 1 invalid input or refused; 2 usage; 3 not found or no access;"
    " 4 the API (or, locally, the database or Kafka) unreachable or failing. See docs/cli.md.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate (offline), apply, show and restore tenant configuration.", no_args_is_help=True)
tenants_app = typer.Typer(help="List and delete tenants.", no_args_is_help=True)
topics_app = typer.Typer(help="Provision Kafka topics from the topic table (local).", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Admin API tokens: through the API, or the first admin token locally (--bootstrap).", no_args_is_help=True
)
connection_app = typer.Typer(
    help="A tenant's Salesforce connection: connect in a browser, status, preflight check, revoke.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(tenants_app, name="tenants")
app.add_typer(topics_app, name="topics")
app.add_typer(tokens_app, name="tokens")
app.add_typer(connection_app, name="connection")
app.add_typer(keys_app, name="keys")
dead_letters_app = typer.Typer(
    help="A tenant's dead letters: list them with their reasons, replay them once fixed, or discard them.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")
schema_app = typer.Typer(
    help="The org's objects and fields as Duplex last read them, schema drift, and the app objects' declared fields.",
    no_args_is_help=True,
)
app.add_typer(schema_app, name="schema")


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
Json = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON, for scripts.")]
Tenant = Annotated[str, typer.Argument(help="Tenant name (metadata.name).", show_default=False)]


class JobKind(StrEnum):
    POLL = "poll"
    BACKFILL = "backfill"
    RECONCILE = "reconcile"


T = TypeVar("T")
M = TypeVar("M", bound=ApiModel)


@dataclass(frozen=True)
class Remote:
    """The global flags: where the API is and where the token is (``None``: from the environment)."""

    server: str | None
    token_file: Path | None


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            help="The admin API (default: $DUPLEX_SERVER, else http://127.0.0.1:8080).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="PATH",
            help="A file holding the API token, readable only by you (default: $DUPLEX_TOKEN, else"
            " $DUPLEX_TOKEN_FILE).",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Remote(server, token_file)


# ---------------------------------------------------------------------------------------------
# Output


def _fail(lines: str | Sequence[str], code: int) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _out() -> Console:
    # Made per use: the test runner swaps sys.stdout per invocation.
    return Console(highlight=False, soft_wrap=False)


def _print_table(table: Table) -> None:
    out = _out()
    with out.capture() as captured:
        out.print(table)
    # Rich pads every cell to its column's width; a line's trailing blanks only get in the way of grep.
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _cell(value: object) -> str:
    # Server-provided text must never be read as rich markup.
    return "-" if value is None or value == "" else escape(str(value))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json", by_alias=True)
    elif isinstance(value, Sequence):
        data = [v.model_dump(mode="json", by_alias=True) for v in value]
    else:
        data = value
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------
# The API


def _exit_code(status: int) -> int:
    if status in (401, 403, 404):
        return EXIT_NO_ACCESS
    if status >= 500:
        return EXIT_UNREACHABLE
    return EXIT_INVALID


def _problem_lines(problem: ApiProblemError, prefix: str = "") -> list[str]:
    if problem.errors:
        return [f"{prefix}{e.field}: {e.message}" if e.field else prefix + e.message for e in problem.errors]
    return [prefix + str(problem)]


def _client(ctx: typer.Context) -> AdminClient:
    remote = ctx.find_object(Remote) or Remote(None, None)
    try:
        settings = load_client_settings(server=remote.server, token_file=remote.token_file)
    except ValidationError as exc:
        names = {"server": "--server / DUPLEX_SERVER", "timeout_seconds": "DUPLEX_TIMEOUT_SECONDS"}
        lines = []
        for error in exc.errors(include_url=False):
            where = names.get(str(error["loc"][0]), str(error["loc"][0]))
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        _fail(lines, EXIT_USAGE)
    try:
        token = credential(settings)
    except CredentialError as exc:
        _fail(str(exc), EXIT_NO_ACCESS if exc.missing else EXIT_INVALID)
    if sends_token_in_clear(settings.server):
        typer.echo(f"warning: {settings.server} is plain http: the token crosses the network unencrypted", err=True)
    return AdminClient(settings.server, token, timeout=settings.timeout_seconds)


@contextmanager
def _api(ctx: typer.Context) -> Iterator[AdminClient]:
    """The API client; a problem or an unreachable server ends the command with its exit code."""
    client = _client(ctx)
    try:
        with client:
            yield client
    except ApiProblemError as exc:
        lines = _problem_lines(exc)
        if exc.status == 401:
            lines = [f"{lines[0]} (the token from {client.credential_source})", *lines[1:]]
        _fail(lines, _exit_code(exc.status))
    except ServerUnreachableError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)


# ---------------------------------------------------------------------------------------------
# Documents from files


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


def _load(files: list[str], policy: SalesforcePolicy | None = None) -> list[LoadedDocument]:
    """The documents in ``files``, each valid, and allowed by ``policy`` when one is given."""
    sources = _read_sources(files)
    try:
        docs = parse_config_sources(sources) if policy is None else validate_sources(sources, policy)
    except ConfigFileError as exc:
        _fail(exc.problems, EXIT_INVALID)
    # Warnings never stop a command (an apiVersion newer than Duplex knows is one): they are said once, up front.
    for doc in docs:
        for line in doc.warnings:
            typer.echo(f"warning: {line}", err=True)
    return docs


def _located(doc: LoadedDocument, docs: Sequence[LoadedDocument]) -> str:
    """How ``config validate`` names where a document is: ``file: `` or ``file: document N: ``."""
    several = sum(1 for d in docs if d.source == doc.source) > 1 or doc.index > 1
    return f"{doc.source}: document {doc.index}: " if several else f"{doc.source}: "


# ---------------------------------------------------------------------------------------------
# config


@config_app.command("validate")
def validate(files: Files) -> None:
    """Check files offline (no server, no database), with this deployment's policy on secrets and hosts.

    The policy comes from DUPLEX_SECRET_ENV_PREFIX, DUPLEX_SALESFORCE_HOSTS and DUPLEX_DEVELOPMENT, as
    the admin API reads them: set them as the deployment does to get the API's answer.
    """
    try:
        policy = PolicySettings().policy()
    except ValidationError as exc:
        _fail([f"DUPLEX_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors(include_url=False)], EXIT_USAGE)
    for doc in _load(files, policy):
        pairs = doc.config.spec.objects
        fields = sum(len(p.fields) for p in pairs)
        typer.echo(f"tenant/{doc.config.tenant_id} valid ({len(pairs)} object pairs, {fields} fields)")


@config_app.command("apply")
def apply(ctx: typer.Context, files: Files, as_json: Json = False) -> None:
    """Store each document as its tenant's next version, if it changed.

    The server validates every document (with its own policy on secrets and hosts) before any is
    stored; they are then applied in order, and a refusal (a tenant outside the token's scope) stops there.
    """
    docs = _load(files)
    with _api(ctx) as api:
        problems: list[str] = []
        for doc in docs:
            try:
                api.validate(to_document(doc.config))
            except ApiProblemError as exc:
                if exc.status not in (400, 422):
                    raise
                problems += _problem_lines(exc, _located(doc, docs))
        if problems:
            _fail(problems, EXIT_INVALID)
        results: list[Applied] = []
        try:
            for doc in docs:
                failed = doc
                results.append(api.apply(doc.config.tenant_id, to_document(doc.config)))
        except ApiProblemError as exc:
            # What was stored before the refusal stays stored: say so before saying why the rest was not.
            _print_applied(results, as_json)
            _fail(_problem_lines(exc, _located(failed, docs)), _exit_code(exc.status))
    _print_applied(results, as_json)


@app.command("plan")
def plan(ctx: typer.Context, files: Files, as_json: Json = False) -> None:
    """Dry-run documents: the rules each would change, the records entering or leaving each filter.

    Nothing is stored or written anywhere; the org is only read (counts and five samples).
    """
    docs = _load(files)
    plans: list[Plan] = []
    with _api(ctx) as api:
        for doc in docs:
            try:
                plans.append(api.plan(doc.config.tenant_id, to_document(doc.config)))
            except ApiProblemError as exc:
                _fail(_problem_lines(exc, _located(doc, docs)), _exit_code(exc.status))
    if as_json:
        _print_json(plans)
        return
    for found in plans:
        against = f"version {found.current_version}" if found.current_version else "nothing (a new tenant)"
        typer.echo(f"tenant/{found.tenant}: compared with {against}; {found.api_calls} API calls to read the org")
        if not found.changes:
            typer.echo("no rule changes")
        else:
            table = _table("PAIR", "FIELD", "CHANGE", "BEFORE", "AFTER")
            for c in found.changes:
                table.add_row(_cell(c.object_pair), _cell(c.app_field), c.change, _short(c.before), _short(c.after))
            _print_table(table)
        for w in found.warnings:
            typer.echo(f"warning: {w.field}: {w.message}")
        if found.filters:
            table = _table("PAIR", "OBJECT", "ENTERING", "LEAVING", "BACKFILL CALLS", "E.G. ENTERING", "E.G. LEAVING")
            for f in found.filters:
                leaving = f.leaving.count if f.leaving else None
                table.add_row(
                    _cell(f.object_pair),
                    _cell(f.salesforce_object),
                    f"{f.entering.count:,}",
                    "-" if leaving is None else f"{leaving:,}",
                    _cell(f.backfill_api_calls),
                    _cell(", ".join(str(s.get("Id")) for s in f.entering.samples)),
                    _cell(", ".join(str(s.get("Id")) for s in f.leaving.samples) if f.leaving else None),
                )
            _print_table(table)


def _short(value: object) -> str:
    if value is None:
        return "-"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    return _cell(text if len(text) <= 60 else text[:57] + "...")


def _print_applied(results: list[Applied], as_json: bool) -> None:
    if as_json:
        _print_json(results)
        return
    for result in results:
        typer.echo(f"tenant/{result.name} {'configured' if result.changed else 'unchanged'} (version {result.version})")


@config_app.command("show")
def show(
    ctx: typer.Context,
    tenant: Tenant,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A stored version (default: current).", show_default=False)
    ] = None,
    as_json: Json = False,
) -> None:
    """Print a stored configuration as YAML; the output can be applied again as it is."""
    with _api(ctx) as api:
        stored = api.show(tenant, version)
    if as_json:
        _print_json(stored)
        return
    typer.echo(
        f"# tenant/{stored.name} version {stored.version}, applied {stored.applied_at.isoformat()}"
        f" by {stored.applied_by}\n# sha256 {stored.sha256}"
    )
    typer.echo(yaml.safe_dump(stored.document, sort_keys=False, allow_unicode=True), nl=False)


@config_app.command("versions")
def versions(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """Every stored version of a tenant, oldest first."""
    with _api(ctx) as api:
        found = api.versions(tenant)
    if as_json:
        _print_json(found)
        return
    table = _table("VERSION", "APPLIED", "APPLIED BY", "SHA256")
    for v in found.items:
        table.add_row(str(v.version), _when(v.applied_at), _cell(v.applied_by), v.sha256[:12])
    _print_table(table)


@config_app.command("diff")
def diff(
    ctx: typer.Context,
    tenant: Tenant,
    before: Annotated[int, typer.Argument(metavar="A", min=1, help="The older version.", show_default=False)],
    after: Annotated[
        int | None,
        typer.Argument(metavar="[B]", min=1, help="The newer version (default: current).", show_default=False),
    ] = None,
    unified: Annotated[bool, typer.Option("--unified", "-u", help="A unified diff of the two documents.")] = False,
    as_json: Json = False,
) -> None:
    """What changed between two versions, path by path."""
    with _api(ctx) as api:
        found = api.diff(tenant, before, after)
    if as_json:
        _print_json(found)
        return
    if unified:
        typer.echo(found.unified, nl=False)
        return
    if not found.changes:
        typer.echo(f"tenant/{found.name}: versions {found.from_version} and {found.to_version} are the same")
        return
    table = _table("PATH", "CHANGE", f"VERSION {found.from_version}", f"VERSION {found.to_version}")
    for change in found.changes:
        table.add_row(
            _cell(change.path),
            change.change,
            "" if change.change == "added" else _cell(json.dumps(change.before, ensure_ascii=False)),
            "" if change.change == "removed" else _cell(json.dumps(change.after, ensure_ascii=False)),
        )
    _print_table(table)


@config_app.command("restore")
def restore(
    ctx: typer.Context,
    tenant: Tenant,
    version: Annotated[int, typer.Argument(metavar="N", min=1, help="The version to make current.")],
    as_json: Json = False,
) -> None:
    """Make a stored version current again (stored as a new version)."""
    with _api(ctx) as api:
        result = api.restore(tenant, version)
    if as_json:
        _print_json(result)
    elif result.changed:
        typer.echo(f"tenant/{result.name} version {version} restored as version {result.version}")
    else:
        typer.echo(f"tenant/{result.name} unchanged: the current version ({result.version}) equals version {version}")


# ---------------------------------------------------------------------------------------------
# tenants


@tenants_app.command("list")
def list_tenants(ctx: typer.Context, as_json: Json = False) -> None:
    """The tenants the token may see, with their current configuration version."""
    with _api(ctx) as api:
        found = api.tenants()
    if as_json:
        _print_json(found)
        return
    table = _table("NAME", "VERSION", "APPLIED", "APPLIED BY")
    for t in found.items:
        table.add_row(t.name, _cell(t.version), _when(t.applied_at), _cell(t.applied_by))
    _print_table(table)


@tenants_app.command("delete")
def delete_tenant(
    ctx: typer.Context,
    tenant: Tenant,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Json = False,
) -> None:
    """Offboard a tenant: every service stops syncing it, its Salesforce grant is revoked; history stays."""
    if not yes and not typer.confirm(
        f"Delete tenant {tenant}? Every service stops syncing it and its Salesforce grant is revoked"
        " (its versions and audit trail are kept)",
        err=True,
    ):
        _fail(f"tenant/{tenant} not deleted", EXIT_INVALID)
    with _api(ctx) as api:
        api.delete_tenant(tenant)
    if as_json:
        _print_json({"name": tenant, "deleted": True})
    else:
        typer.echo(f"tenant/{tenant} deleted")


# ---------------------------------------------------------------------------------------------
# tokens

# The flags that set each field of a token request, for error messages.
_TOKEN_FLAGS = {"name": "--name", "role": "--role", "tenants": "--tenant", "expiresIn": "--expires-in"}


def _token_request(name: str, role: Role, tenants: list[str] | None, expires_in: str | None) -> TokenRequest:
    try:
        return TokenRequest.model_validate(
            {"name": name, "role": role.value, "tenants": tenants or None, "expiresIn": expires_in}
        )
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            flag = _TOKEN_FLAGS[str(error["loc"][0])]
            # A repeated flag's error names the value, so the user sees which --tenant is wrong.
            where = f"{flag} {error['input']!r}" if len(error["loc"]) > 1 else flag
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        _fail(lines, EXIT_USAGE)


def _token_summary(token: CreatedToken) -> str:
    scope = "every tenant" if token.tenants is None else "tenants " + ", ".join(token.tenants)
    expiry = "never expires" if token.expires_at is None else f"expires {token.expires_at.isoformat()}"
    return f"token/{token.name} created (id {token.id}, {token.role}, {scope}, {expiry}); shown once"


def _bootstrap_token(request: TokenRequest, dsn: str | None) -> CreatedToken:
    settings, url = _settings(dsn)

    async def run() -> CreatedToken:
        async with connect(url, settings.connect_timeout_seconds) as conn:
            record, secret = await TokenStore(conn).create(
                name=request.name,
                role=Role(request.role),
                tenants=request.tenants,
                lifetime=None if request.expires_in is None else parse_duration(request.expires_in),
                # Local bootstrap has no principal: the one place a self-asserted actor (DUPLEX_ACTOR) remains.
                actor=settings.actor,
            )
        return CreatedToken(**token_view(record).model_dump(), token=secret)

    return _run(run())


@tokens_app.command("create")
def create_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="What the token is for (shown in the audit log).")],
    role: Annotated[Role, typer.Option("--role", help="viewer reads; operator also controls runs; admin does all.")],
    tenants: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="A tenant it may see (repeatable); omitted: every tenant.", show_default=False),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime: 12h, 30d, 8w; omitted: no expiry.", show_default=False)
    ] = None,
    bootstrap: Annotated[
        bool,
        typer.Option(
            "--bootstrap",
            help="Write it to the database directly (--dsn / $POSTGRES_DSN) instead of asking the API: how the"
            " first admin token is made. The audit log names $DUPLEX_ACTOR (default: user@host).",
        ),
    ] = False,
    dsn: Dsn = None,
    as_json: Json = False,
) -> None:
    """Create an API token and print it (only the token, on stdout) this once; it is stored only as a hash."""
    if dsn is not None and not bootstrap:
        raise typer.BadParameter("only with --bootstrap (through the API, no database is needed)", param_hint="--dsn")
    request = _token_request(name, role, tenants, expires_in)
    if bootstrap:
        created = _bootstrap_token(request, dsn)
    else:
        with _api(ctx) as api:
            created = api.create_token(request)
    if as_json:
        _print_json(created)
        return
    typer.echo(_token_summary(created), err=True)
    typer.echo(created.token)


@tokens_app.command("list")
def list_tokens(ctx: typer.Context, as_json: Json = False) -> None:
    """Every API token (never its secret)."""
    with _api(ctx) as api:
        found = api.tokens()
    if as_json:
        _print_json(found)
        return
    now = datetime.now(UTC)
    table = _table("ID", "NAME", "ROLE", "TENANTS", "EXPIRES", "LAST USED", "STATE")
    for t in found.items:
        if t.revoked_at is not None:
            state = f"revoked {_when(t.revoked_at)}"
        elif t.expires_at is not None and t.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        tenants = "all" if t.tenants is None else ", ".join(t.tenants)
        table.add_row(t.id, _cell(t.name), t.role, tenants, _when(t.expires_at), _when(t.last_used_at), state)
    _print_table(table)


@tokens_app.command("revoke")
def revoke_token(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (from `duplex tokens list`).")],
    as_json: Json = False,
) -> None:
    """Revoke a token at once (revoking it again is fine)."""
    with _api(ctx) as api:
        api.revoke_token(token_id)
    if as_json:
        _print_json({"id": token_id, "revoked": True})
    else:
        typer.echo(f"token/{token_id} revoked")


# ---------------------------------------------------------------------------------------------
# connection


def _connected_line(connection: SalesforceConnectionView) -> str:
    return f"tenant/{connection.name}: connected org {connection.org_id} as {connection.username}"


def _wait_connected(
    api: AdminClient, tenant: str, previous: datetime | None, timeout: float
) -> SalesforceConnectionView | None:
    """The connection once a new one is made (``connected_at`` moved), or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current = api.connection(tenant)
        if current.status == "connected" and current.connected_at != previous:
            return current
        if time.monotonic() >= deadline:
            return None
        time.sleep(CONNECT_POLL_SECONDS)


@connection_app.command("connect")
def connect_tenant(
    ctx: typer.Context,
    tenant: Tenant,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the authorize URL in a browser here.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", min=1, help="Seconds to wait (default: until the URL expires, 10 minutes).", show_default=False
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Connect (or reconnect) the tenant's org: prints the authorize URL, then waits until it is connected.

    Open the URL in the browser of a Salesforce user of the org, log in and allow access.
    """
    with _api(ctx) as api:
        previous = api.connection(tenant).connected_at
        started = api.authorize(tenant)
        # With --json, stdout carries only the final JSON.
        typer.echo(f"Open this URL in a browser, log in to the org of tenant/{tenant} and allow access:", err=True)
        typer.echo(started.authorize_url, err=as_json)
        if open_browser and not webbrowser.open(started.authorize_url):
            typer.echo("warning: no browser could be opened here; open the URL yourself", err=True)
        wait = timeout or max(1.0, (started.expires_at - datetime.now(UTC)).total_seconds())
        with Console(stderr=True).status(f"waiting for tenant/{tenant} to be connected ..."):
            connected = _wait_connected(api, tenant, previous, wait)
    if connected is None:
        _fail(
            f"tenant/{tenant} was not connected within {wait:.0f}s; run `duplex connection connect {tenant}` again",
            EXIT_INVALID,
        )
    if as_json:
        _print_json(connected)
    else:
        typer.echo(_connected_line(connected))


@connection_app.command("status")
def connection_status(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """The tenant's Salesforce connection: status, org, user, scopes, last refresh and error."""
    with _api(ctx) as api:
        found = api.connection(tenant)
    if as_json:
        _print_json(found)
        return
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("tenant", found.name),
        ("status", found.status),
        ("org", found.org_id),
        ("user", found.username),
        ("instance", found.instance_url),
        ("scopes", " ".join(found.scopes)),
        ("connected", None if found.connected_at is None else f"{_when(found.connected_at)} by {found.connected_by}"),
        ("last refresh", _when(found.last_refresh_at) if found.last_refresh_at else None),
        ("last error", found.last_error),
    ]
    for label, value in rows:
        table.add_row(label, _cell(value))
    _print_table(table)


@connection_app.command("revoke")
def connection_revoke(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """Revoke the tenant's grant at Salesforce and forget its tokens; syncing stops until it is connected again."""
    with _api(ctx) as api:
        found = api.revoke_connection(tenant)
    if as_json:
        _print_json(found)
    else:
        typer.echo(f"tenant/{found.name}: Salesforce grant revoked (status {found.status})")


@connection_app.command("check")
def connection_check(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """Preflight: API access, limits, each object's permissions and fields, the CDC selection. Exit 1 if any fails."""
    with _api(ctx) as api:
        report = api.check_connection(tenant)
    if as_json:
        _print_json(report)
    else:
        out = _out()
        for check in report.checks:
            line = Text("✓ " if check.ok else "✗ ", style="green" if check.ok else "red")
            line.append(f"{check.name}: {check.detail}")
            if not check.ok and check.fix:
                line.append(f" (fix: {check.fix})")
            # One line per check, however long, so that the output greps: the terminal wraps it.
            out.print(line, soft_wrap=True)
        failed = sum(1 for c in report.checks if not c.ok)
        summary = f"{failed} of {len(report.checks)} checks failed" if failed else f"all {len(report.checks)} passed"
        out.print(Text(f"tenant/{report.tenant}: {summary}"), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(EXIT_INVALID)


# ---------------------------------------------------------------------------------------------
# run control


# How often --wait asks how far a job has come (cdc-ingest saves progress once per page).
_JOB_POLL_SECONDS = 1.0
_ENDED = ("succeeded", "failed")


@app.command("backfill")
def backfill(
    ctx: typer.Context,
    tenant: Tenant,
    salesforce_object: Annotated[str, typer.Argument(metavar="OBJECT", help="A Salesforce object the tenant syncs.")],
    wait: Annotated[bool, typer.Option("--wait", help="Show its progress until it is done.")] = False,
    as_json: Json = False,
) -> None:
    """Re-read every record of one object from Salesforce (cdc-ingest starts it within seconds)."""
    with _api(ctx) as api:
        requested = api.backfill(tenant, salesforce_object)
        if not as_json:
            where = f"tenant/{requested.tenant}"
            typer.echo(f"backfill of {requested.object} for {where}: job {requested.job} ({requested.status})")
        if not wait:
            if as_json:
                _print_json(requested)
            return
        _finish_job(_follow(api, tenant, requested.job), as_json)


@app.command("run")
def run_job(
    ctx: typer.Context,
    tenant: Tenant,
    kind: Annotated[JobKind, typer.Argument(help="poll, backfill or reconcile.")],
    pair: Annotated[str, typer.Argument(metavar="PAIR", help="An object pair of the tenant.")],
    wait: Annotated[bool, typer.Option("--wait", help="Show its progress until it ends.")] = False,
    as_json: Json = False,
) -> None:
    """Poll, backfill or reconcile one object pair now (or follow the one already under way)."""
    with _api(ctx) as api:
        job = api.run_job(tenant, kind.value, pair)
        if not as_json:
            typer.echo(f"{job.kind} of {job.object_pair} for tenant/{job.tenant}: job {job.id} ({job.status})")
        if not wait:
            if as_json:
                _print_json(job)
            return
        _finish_job(_follow(api, tenant, job.id), as_json)


@app.command("job")
def show_job(
    ctx: typer.Context,
    tenant: Tenant,
    job_id: Annotated[int, typer.Argument(metavar="JOB", help="The job's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Show its progress until it ends.")] = False,
    as_json: Json = False,
) -> None:
    """One job: its state, progress and what it found."""
    with _api(ctx) as api:
        job = _follow(api, tenant, job_id) if wait else api.job(tenant, job_id)
    if as_json:
        _print_json(job)
        return
    typer.echo(f"job {job.id}: {job.kind} of {job.object_pair} ({job.object}), {job.status}, by {job.trigger}")
    typer.echo(f"  done {job.done:,}" + ("" if job.estimated is None else f" of {job.estimated:,}"))
    if job.error:
        typer.echo(f"  error: {job.error}")
    for name, value in job.result.items():
        if not isinstance(value, list):
            typer.echo(f"  {name}: {value}")
    _exit_if_failed(job)


@app.command("jobs")
def list_jobs(
    ctx: typer.Context,
    tenant: Tenant,
    kind: Annotated[JobKind | None, typer.Option("--kind", help="Only this kind.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="requested, running, succeeded or failed.")] = None,
    pair: Annotated[str | None, typer.Option("--pair", help="Only this object pair's.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 50,
    before: Annotated[int | None, typer.Option("--before", help="Only jobs older than this one (paging).")] = None,
    as_json: Json = False,
) -> None:
    """The tenant's jobs, newest first: polls, backfills and reconciles with their progress."""
    with _api(ctx) as api:
        kind_name = kind.value if kind else None
        found = api.jobs(tenant, kind=kind_name, status=status, pair=pair, limit=limit, before=before).jobs
    if as_json:
        _print_json(found)
        return
    table = _table("JOB", "KIND", "PAIR", "STATUS", "BY", "DONE", "ESTIMATED", "%", "RATE/S", "LEFT", "CREATED")
    for j in found:
        table.add_row(
            str(j.id),
            j.kind,
            _cell(j.object_pair),
            j.status,
            j.trigger,
            f"{j.done:,}",
            _cell(None if j.estimated is None else f"{j.estimated:,}"),
            _cell(j.percent),
            _cell(None if j.records_per_second is None else f"{j.records_per_second:,.0f}"),
            _cell(None if j.seconds_left is None else f"{j.seconds_left:,.0f}s"),
            _when(j.created_at),
        )
    _print_table(table)


def _follow(api: AdminClient, tenant: str, job_id: int) -> JobView:
    """Poll one job with a progress bar (on stderr) until it ends."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"job {job_id}", total=None, rate="")
        while True:
            job = api.job(tenant, job_id)
            rate = f"{job.records_per_second:,.0f}/s" if job.records_per_second else ""
            total = max(job.estimated, job.done) if job.estimated is not None else None
            bar.update(
                task,
                description=f"{job.kind} of {job.object_pair}: {job.status}",
                completed=job.done,
                total=total,
                rate=rate,
            )
            if job.status in _ENDED:
                return job
            time.sleep(_JOB_POLL_SECONDS)


def _finish_job(job: JobView, as_json: bool) -> None:
    if as_json:
        _print_json(job)
    elif job.status == "succeeded":
        rate = f" ({job.records_per_second:,.0f} records/s)" if job.records_per_second else ""
        found = ""
        if job.kind == "reconcile":
            differences = sum(
                int(job.result.get(k, 0)) for k in ("missingInDuplex", "valuesDiffer", "missingInSalesforce")
            )
            found = f", {differences:,} difference(s), {int(job.result.get('published', 0)):,} re-read and published"
        what = job.object if job.kind == "backfill" else job.object_pair
        typer.echo(f"{job.kind} of {what} done: {job.done:,} records{rate}{found}")
    _exit_if_failed(job)


def _exit_if_failed(job: JobView) -> None:
    if job.status == "failed":
        _fail(f"{job.kind} job {job.id} of {job.object_pair} failed: {job.error}", EXIT_INVALID)


@app.command("backfills")
def backfills(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """Each object's latest backfill: published of estimated, rate, time left."""
    with _api(ctx) as api:
        found = api.backfills(tenant).backfills
    if as_json:
        _print_json(found)
        return
    table = _table("OBJECT", "STATUS", "METHOD", "PUBLISHED", "ESTIMATED", "%", "RATE/S", "LEFT", "STARTED")
    for b in found:
        table.add_row(
            _cell(b.object),
            b.status,
            b.method,
            f"{b.published:,}",
            _cell(None if b.estimated is None else f"{b.estimated:,}"),
            _cell(b.percent),
            _cell(None if b.records_per_second is None else f"{b.records_per_second:,.0f}"),
            _cell(None if b.seconds_left is None else f"{b.seconds_left:,.0f}s"),
            _when(b.started_at),
        )
    _print_table(table)


@app.command("health")
def health(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """A tenant's quarantines, pauses, problems, last syncs, API budget, objects, drift and jobs under way (exit 0)."""
    with _api(ctx) as api:
        report = api.health(tenant)
    if as_json:
        _print_json(report)
        return
    typer.echo(f"tenant/{report.tenant}: {report.status} (configuration version {report.configuration_version})")
    if report.quarantined_pairs:
        table = _table("QUARANTINED PAIR", "SINCE", "REASON")
        for pair in report.quarantined_pairs:
            table.add_row(_cell(pair.pair), _when(pair.since), _cell(pair.reason))
        _print_table(table)
    if report.pauses:
        table = _table("PAUSED PAIR", "DIRECTION", "SINCE", "REASON")
        for p in report.pauses:
            table.add_row(_cell(p.object_pair), p.direction, _when(p.paused_at), _cell(p.reason))
        _print_table(table)
    if report.problems:
        table = _table("EVENT", "CODE", "COUNT", "LAST")
        for problem in report.problems:
            table.add_row(_cell(problem.event), _cell(problem.code), str(problem.count), _when(problem.last_at))
        _print_table(table)
    else:
        typer.echo(f"no problems since {_when(report.problems_since)}")
    typer.echo(
        f"last sync: to Salesforce {_when(report.last_sync.to_crm)}, to the app {_when(report.last_sync.to_app)}"
    )
    if report.budget is not None:
        b = report.budget
        org = f"; org {b.org_used:,} of {b.org_max:,} used" if b.org_used is not None and b.org_max else ""
        warning = " (LOW: under 10 % left)" if b.low else ""
        typer.echo(f"API calls: {b.calls_last_day:,} of {b.daily_api_cap:,} in 24 h{org}{warning}")
    if report.objects:
        typer.echo("objects: " + ", ".join(f"{o.object} ({o.mode})" for o in report.objects))
    if report.drift:
        _print_warnings(report.drift)
    for job in report.jobs:
        progress = "" if job.percent is None else f", {job.percent:g} %"
        typer.echo(f"job {job.id}: {job.kind} of {job.object_pair} {job.status}{progress}")


_CSV_COLUMNS = ("id", "at", "service", "event", "status", "link_id", "record_id", "code", "message", "detail")


def _moment(option: str, text: str | None) -> str | None:
    """``12h``, ``30d``, ``8w`` ago, or an ISO 8601 time (UTC when it names no zone)."""
    if text is None:
        return None
    try:
        return (datetime.now(UTC) - parse_duration(text)).isoformat()
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{option}: give a time such as 2026-12-07T10:00:00Z, or how long ago such as 12h, 30d", EXIT_USAGE)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _summary(entry: SyncLogEntry) -> str:
    """A row's message, or for a resolved change what happened to each field."""
    if entry.message:
        return entry.message
    fields = entry.detail.get("fields")
    if isinstance(fields, dict) and fields:
        decided = ", ".join(f"{name} {(d or {}).get('outcome', '?')}" for name, d in sorted(fields.items()))
        return f"{entry.detail.get('side', '?')} {entry.detail.get('kind', '?')}: {decided}"
    return ""


def _print_csv(entries: Sequence[SyncLogEntry]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for entry in entries:
        row = entry.model_dump(mode="json")
        writer.writerow([json.dumps(row[c]) if c == "detail" else row[c] for c in _CSV_COLUMNS])
    typer.echo(out.getvalue(), nl=False)


@app.command("log")
def sync_log(
    ctx: typer.Context,
    tenant: Tenant,
    status: Annotated[
        list[str] | None, typer.Option(help=f"Any of: {', '.join(STATUSES)}. Repeatable.", show_default=False)
    ] = None,
    event: Annotated[list[str] | None, typer.Option(help="Such as write.rejected. Repeatable.")] = None,
    code: Annotated[list[str] | None, typer.Option(help="Such as REQUIRED_FIELD_MISSING. Repeatable.")] = None,
    pair: Annotated[str | None, typer.Option(help="An object pair's name.", show_default=False)] = None,
    record: Annotated[
        str | None, typer.Option(help="App id, Salesforce id (15 or 18) or link id.", show_default=False)
    ] = None,
    since: Annotated[str | None, typer.Option(help="12h, 30d, 8w ago, or an ISO time.", show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="As --since.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue from a page's next cursor.", show_default=False)] = None,
    every: Annotated[bool, typer.Option("--all", help="Every matching row, page after page.")] = False,
    as_json: Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV (detail as JSON), for spreadsheets.")] = False,
) -> None:
    """Search a tenant's sync log, newest first."""
    unknown = sorted(set(status or ()) - set(STATUSES))
    if unknown:
        _fail(f"--status {unknown[0]}: not one of {', '.join(STATUSES)}", EXIT_USAGE)
    if as_json and as_csv:
        _fail("--json and --csv: choose one", EXIT_USAGE)
    filters = {
        "status": status,
        "event": event,
        "code": code,
        "pair": pair,
        "record": record,
        "since": _moment("--since", since),
        "until": _moment("--until", until),
        "limit": limit,
    }
    entries: list[SyncLogEntry] = []
    with (
        _api(ctx) as api,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.completed:,} rows"),
            console=Console(stderr=True),
            transient=True,
            disable=not every,
        ) as progress,
    ):
        task = progress.add_task("sync log")
        while True:
            page = api.sync_log(tenant, filters, cursor)
            entries += page.entries
            progress.update(task, completed=len(entries))
            cursor = page.next_cursor
            if not every or cursor is None:
                break
    if as_json:
        _print_json(entries)
    elif as_csv:
        _print_csv(entries)
    else:
        table = _table("AT", "STATUS", "EVENT", "CODE", "RECORD", "WHAT")
        for entry in entries:
            table.add_row(
                _when(entry.at),
                entry.status,
                _cell(entry.event),
                _cell(entry.code),
                _cell(entry.record_id or entry.link_id),
                _cell(_summary(entry)),
            )
        _print_table(table)
    if cursor is not None and not every:
        typer.echo(f"more rows: --all, or --cursor {cursor}", err=True)


@app.command("timeline")
def record_timeline(
    ctx: typer.Context,
    tenant: Tenant,
    record: Annotated[str, typer.Argument(help="App id, Salesforce id (15 or 18) or link id.", show_default=False)],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The last this many rows.")] = 500,
    as_json: Json = False,
) -> None:
    """Everything Duplex did with one record, oldest first: why a field holds its value."""
    with _api(ctx) as api:
        found = api.timeline(tenant, record, limit)
    if as_json:
        _print_json(found)
        return
    links = _table("PAIR", "LINK", "APP ID", "SALESFORCE ID")
    for link in found.links:
        links.add_row(_cell(link.pair), _cell(link.link_id), _cell(link.app_record_id), _cell(link.salesforce_id))
    _print_table(links)
    if found.truncated:
        typer.echo(f"(older rows left out: --limit above {limit})")
    table = _table("AT", "SERVICE", "EVENT", "CODE", "WHAT")
    for entry in found.entries:
        table.add_row(
            _when(entry.at), _cell(entry.service), _cell(entry.event), _cell(entry.code), _cell(_summary(entry))
        )
    _print_table(table)


RecordOption = Annotated[
    str | None, typer.Option(help="A record's only: its app, Salesforce or link id.", show_default=False)
]
SinceOption = Annotated[
    str | None, typer.Option(help="Failed since: 12h, 30d, 8w ago, or an ISO time.", show_default=False)
]


@dead_letters_app.command("list")
def dead_letters_list(
    ctx: typer.Context,
    tenant: Tenant,
    topic: Annotated[list[str] | None, typer.Option(help="A source topic, such as app_changes. Repeatable.")] = None,
    state: Annotated[list[str] | None, typer.Option(help="pending, replayed or discarded. Repeatable.")] = None,
    record: RecordOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The newest this many.")] = 100,
    as_json: Json = False,
) -> None:
    """The tenant's dead letters, newest first, with why each was refused."""
    with _api(ctx) as api:
        found = api.dead_letters(tenant, topic or [], state or [], limit, record, _moment("--since", since))
    if as_json:
        _print_json(found)
        return
    table = _table("ID", "STATE", "FAILED", "SERVICE", "KEY", "REASON")
    for e in found.entries:
        table.add_row(_cell(e.id), e.state, _when(e.failed_at), _cell(e.service), _cell(e.record_key), _cell(e.reason))
    _print_table(table)
    if found.total > len(found.entries):
        typer.echo(f"{found.total - len(found.entries)} older not shown: --limit", err=True)


def _acted(acted: Acted, verb: str, as_json: bool) -> None:
    if as_json:
        _print_json(acted)
        return
    typer.echo(f"{len(acted.done)} {verb}" + (f": {', '.join(acted.done)}" if acted.done else ""))
    if acted.already:
        typer.echo(f"{len(acted.already)} {verb} before, left as they were: {', '.join(acted.already)}")


@dead_letters_app.command("replay")
def dead_letters_replay(
    ctx: typer.Context,
    tenant: Tenant,
    ids: Annotated[list[str] | None, typer.Argument(help="Dead letters' ids, as listed.", show_default=False)] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every pending dead letter (of --topic, --record, --since), oldest first.")
    ] = False,
    topic: Annotated[str | None, typer.Option(help="With --all: of this source topic only.")] = None,
    record: RecordOption = None,
    since: SinceOption = None,
    as_json: Json = False,
) -> None:
    """Send dead letters back to the topic they came from, once their cause is fixed. Records
    Salesforce refused are the crm_writes ones: --all --topic crm_writes retries them."""
    if bool(ids) == every:
        _fail("give dead letters' ids, or --all", EXIT_USAGE)
    try:
        request = ReplayRequest.model_validate(
            {"ids": ids or None, "all": every, "topic": topic, "record": record, "since": _moment("--since", since)}
        )
    except ValidationError as exc:
        _fail([str(e["msg"]) for e in exc.errors()], EXIT_USAGE)
    with _api(ctx) as api:
        acted = api.replay(tenant, request)
    _acted(acted, "replayed", as_json)


@dead_letters_app.command("discard")
def dead_letters_discard(
    ctx: typer.Context,
    tenant: Tenant,
    ids: Annotated[list[str], typer.Argument(help="Dead letters' ids, as listed.", show_default=False)],
    reason: Annotated[str, typer.Option(help="Why they are not to be replayed.", show_default=False)],
    as_json: Json = False,
) -> None:
    """Mark dead letters as not to be replayed, with a reason."""
    with _api(ctx) as api:
        acted = api.discard(tenant, ids, reason)
    _acted(acted, "discarded", as_json)


@app.command("retry")
def retry_rejected(
    ctx: typer.Context,
    tenant: Tenant,
    record: RecordOption = None,
    pair: Annotated[
        str | None, typer.Option("--pair", help="The rejected records of one object pair.", show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Rejected since: 12h, 30d, 8w ago, or an ISO time; alone, every record rejected since.",
            show_default=False,
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Retry the records whose latest write Salesforce rejected, once the mapping is fixed: the app is
    asked to publish each again, and the mapping in force maps it."""
    if (record, pair, since) == (None, None, None):
        _fail("say which records: --record, --pair or --since (--since alone: every record rejected since)", EXIT_USAGE)
    try:
        request = RetryRequest.model_validate(
            {"record": record, "objectPair": pair, "since": _moment("--since", since)}
        )
    except ValidationError as exc:
        _fail([str(e["msg"]) for e in exc.errors()], EXIT_USAGE)
    with _api(ctx) as api:
        retries = api.retry(tenant, request)
    if as_json:
        _print_json(retries)
        return
    noun = "record" if retries.requested == 1 else "records"
    typer.echo(f"tenant/{retries.tenant}: the app was asked to publish {retries.requested} {noun} again")
    if retries.records:
        table = _table("APP ID", "SALESFORCE ID", "PAIR", "REJECTED", "CODE")
        for r in retries.records:
            table.add_row(
                _cell(r.app_record_id),
                _cell(r.salesforce_id),
                _cell(r.object_pair),
                _when(r.rejected_at),
                _cell(r.code),
            )
        _print_table(table)
    if retries.skipped:
        table = _table("APP ID", "SALESFORCE ID", "LINK", "PAIR", "SKIPPED BECAUSE")
        for s in retries.skipped:
            table.add_row(
                _cell(s.app_record_id), _cell(s.salesforce_id), _cell(s.link_id), _cell(s.object_pair), _cell(s.reason)
            )
        _print_table(table)


PairOption = Annotated[
    str | None, typer.Option("--pair", help="One object pair (default: every pair).", show_default=False)
]
DirectionOption = Annotated[
    str, typer.Option(help="to_crm (writes to Salesforce), to_app (updates to the app) or both.")
]


def _print_pauses(state: PauseState, as_json: bool) -> None:
    if as_json:
        _print_json(state)
        return
    if not state.pauses:
        typer.echo(f"tenant/{state.tenant}: nothing paused")
    else:
        table = _table("PAIR", "DIRECTION", "SINCE", "BY", "REASON")
        for p in state.pauses:
            table.add_row(_cell(p.object_pair), p.direction, _when(p.paused_at), _cell(p.actor), _cell(p.reason))
        _print_table(table)
    if state.held:
        table = _table("HELD PAIR", "DIRECTION", "OUTPUTS", "OLDEST")
        for h in state.held:
            table.add_row(_cell(h.object_pair), h.direction, f"{h.outputs:,}", _when(h.oldest))
        _print_table(table)
    if state.held_inputs:
        table = _table("HELD PAIR", "CHANGES UNDECIDED", "OLDEST")
        for i in state.held_inputs:
            table.add_row(_cell(i.object_pair), f"{i.changes:,}", _when(i.oldest))
        _print_table(table)


def _request(model: type[M], **fields: Any) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        _fail([f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()], EXIT_USAGE)


@app.command("pause")
def pause_sync(
    ctx: typer.Context,
    tenant: Tenant,
    pair: PairOption = None,
    direction: DirectionOption = "both",
    reason: Annotated[str | None, typer.Option(help="Why (kept with the pause).", show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """Pause syncing one way or both, for one pair or all: changes are held, in order, until resumed."""
    request = _request(PauseRequest, objectPair=pair, direction=direction, reason=reason)
    with _api(ctx) as api:
        _print_pauses(api.pause(tenant, request), as_json)


@app.command("resume")
def resume_sync(
    ctx: typer.Context,
    tenant: Tenant,
    pair: PairOption = None,
    direction: DirectionOption = "both",
    as_json: Json = False,
) -> None:
    """End pauses (of one pair, or every pause of the direction); what they held flows on in order."""
    request = _request(ResumeRequest, objectPair=pair, direction=direction)
    with _api(ctx) as api:
        _print_pauses(api.resume(tenant, request), as_json)


@app.command("pauses")
def pauses(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """What is paused, and how many writes and updates the pauses hold."""
    with _api(ctx) as api:
        _print_pauses(api.pauses(tenant), as_json)


# ---------------------------------------------------------------------------------------------
# Schemas


def _print_changes(changes: Sequence[ChangeItem], title: str) -> None:
    if not changes:
        return
    table = _table(title, "KIND", "FIELD")
    for c in changes:
        table.add_row(_cell(c.message), c.kind, _cell(c.field))
    _print_table(table)


def _print_warnings(warnings: Sequence[WarningItem]) -> None:
    if not warnings:
        typer.echo("no rule is touched")
        return
    table = _table("PAIR", "RULE", "PAUSED", "WARNING")
    for w in warnings:
        rule = w.app_field and f"{w.app_field} -> {w.salesforce_field}"
        table.add_row(
            _cell(w.object_pair), _cell(rule or w.salesforce_field), "yes" if w.paused else "no", _cell(w.message)
        )
    _print_table(table)


@schema_app.command("refresh")
def schema_refresh(
    ctx: typer.Context,
    tenant: Tenant,
    objects: Annotated[
        list[str] | None, typer.Option("--object", help="Describe this object too (one API call). Repeatable.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Read the org's schema again now: what changed since the last read, and the rules it touches."""
    with _api(ctx) as api:
        done = api.refresh_schema(tenant, objects or [])
    if as_json:
        _print_json(done)
        return
    typer.echo(f"described {', '.join(done.objects)} ({done.api_calls} API calls)")
    for name, why in done.failed.items():
        typer.echo(f"could not describe {name}: {why}", err=True)
    if not done.changes:
        typer.echo("nothing changed since the last read")
        return
    _print_changes(done.changes, "CHANGE")
    _print_warnings(done.warnings)


@schema_app.command("objects")
def schema_objects(
    ctx: typer.Context,
    tenant: Tenant,
    kind: Annotated[
        str | None, typer.Option(help="standard, custom, metadata, platform_event, external or system.")
    ] = None,
    search: Annotated[str | None, typer.Option(help="Name or label contains.")] = None,
    as_json: Json = False,
) -> None:
    """The org's objects as last read (refresh first for today's): kind, flags, CDC selection."""
    with _api(ctx) as api:
        found = api.schema_objects(tenant, kind, search)
    if as_json:
        _print_json(found)
        return
    table = _table("OBJECT", "LABEL", "KIND", "QUERY", "CREATE", "UPDATE", "CDC")
    flag = {True: "yes", False: "no", None: "-"}
    for o in found.items:
        table.add_row(
            _cell(o.name),
            _cell(o.label),
            o.kind,
            flag[o.queryable],
            flag[o.createable],
            flag[o.updateable],
            flag[o.cdc_selected],
        )
    _print_table(table)
    typer.echo(f"{len(found.items)} objects, read {_when(found.listed_at)}", err=True)


@schema_app.command("describe")
def schema_describe(
    ctx: typer.Context,
    tenant: Tenant,
    name: Annotated[str, typer.Argument(help="The Salesforce object, such as Account.", show_default=False)],
    version: Annotated[int | None, typer.Option(min=1, help="An older version.")] = None,
    as_json: Json = False,
) -> None:
    """One object's fields as last described: type, length, required, writable, picklist values."""
    with _api(ctx) as api:
        found = api.schema_object(tenant, name, version)
    if as_json:
        _print_json(found)
        return
    typer.echo(f"{found.name} version {found.version}, described {_when(found.described_at)}")
    table = _table("FIELD", "LABEL", "TYPE", "LENGTH", "REQUIRED", "WRITABLE", "PICKLIST")
    for f in found.fields:
        writable = (
            "create+update"
            if f.createable and f.updateable
            else "create"
            if f.createable
            else "update"
            if f.updateable
            else "no"
        )
        values = ", ".join(p.value if p.value == p.label else f"{p.value} ({p.label})" for p in f.picklist)
        table.add_row(
            _cell(f.name),
            _cell(f.label),
            f.type,
            str(f.length or "-"),
            "yes" if f.required else "no",
            writable,
            _cell(values),
        )
    _print_table(table)
    _print_changes(found.changes, "CHANGED IN THIS VERSION")


@schema_app.command("drift")
def schema_drift(ctx: typer.Context, tenant: Tenant, as_json: Json = False) -> None:
    """Rules the org's schema breaks now (paused ones say so), and the latest changes."""
    with _api(ctx) as api:
        found = api.schema_drift(tenant)
    if as_json:
        _print_json(found)
        return
    _print_warnings(found.warnings)
    _print_changes(found.recent, "RECENT CHANGE")


@schema_app.command("suggest")
def schema_suggest(
    ctx: typer.Context,
    tenant: Tenant,
    pair: Annotated[str, typer.Argument(help="The object pair, such as partners.", show_default=False)],
    as_json: Json = False,
) -> None:
    """Mapping suggestions for a pair: each app field mapped, ignored, or its best Salesforce fields."""
    with _api(ctx) as api:
        found = api.suggestions(tenant, pair)
    if as_json:
        _print_json(found)
        return
    table = _table("APP FIELD", "STATUS", "SALESFORCE", "CONFIDENCE", "WHY")
    for f in found.fields:
        best = f.candidates[0] if f.candidates else None
        shown = f.mapped_to or (best.salesforce if best else None)
        status = (
            f.status if f.agrees is not False else f"{f.status} (best candidate: {best.salesforce if best else '-'})"
        )
        table.add_row(
            _cell(f.app),
            _cell(status),
            _cell(shown),
            f"{best.confidence:.2f}" if best else "-",
            _cell("; ".join(best.reasons) if best else None),
        )
    _print_table(table)


@schema_app.command("filter")
def schema_filter(
    ctx: typer.Context,
    tenant: Tenant,
    pair: Annotated[str, typer.Argument(help="The object pair, such as partners.", show_default=False)],
    soql: Annotated[
        str | None, typer.Option(help="A WHERE clause to try; the pair's own filter.soql when left out.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Validate a pair's SOQL filter against the org: how many records it selects, and five of them."""
    with _api(ctx) as api:
        preview = api.validate_filter(tenant, pair, soql)
    if as_json:
        _print_json(preview)
        return
    typer.echo(f"{preview.count:,} {preview.salesforce_object} records match {preview.soql}")
    if preview.samples:
        columns = list(dict.fromkeys(k for row in preview.samples for k in row))
        table = _table(*(c.upper() for c in columns))
        for row in preview.samples:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        _print_table(table)


@schema_app.command("declare")
def schema_declare(
    ctx: typer.Context,
    tenant: Tenant,
    file: Annotated[
        Path,
        typer.Option(
            "-f", "--file", help="YAML or JSON: {object: NAME, fields: [{name, label, type, required, picklist}]}."
        ),
    ],
    as_json: Json = False,
) -> None:
    """Declare an app object's fields (a new version when they changed), for suggestions and checks."""
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"{file}: {exc}", EXIT_INVALID)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("object"), str):
        _fail(f"{file}: expected a mapping with object (a name) and fields (a list)", EXIT_INVALID)
    try:
        request = AppSchemaRequest.model_validate({"fields": loaded.get("fields")})
    except ValidationError as exc:
        _fail([f"{file}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()], EXIT_INVALID)
    with _api(ctx) as api:
        declared: AppSchemaItem = api.declare_app_object(tenant, loaded["object"], request)
    if as_json:
        _print_json(declared)
        return
    typer.echo(f"app object {declared.object}: version {declared.version} ({len(declared.fields)} fields)")


# ---------------------------------------------------------------------------------------------
# Local bootstrap: the database (and Kafka) directly


def _settings(dsn: str | None) -> tuple[AdminSettings, str]:
    settings = load_settings(dsn)
    if settings.postgres_dsn is None:
        _fail("no database configured: set POSTGRES_DSN or pass --dsn", EXIT_USAGE)
    return settings, settings.postgres_dsn.get_secret_value()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DatabaseUnavailableError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)


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
    partitions: Annotated[
        list[str] | None,
        typer.Option(
            help="Partitions of every topic but the DLQs (N), or of one (TOPIC=N, the table's key, "
            "e.g. crm_writes=24); repeatable. Default: the table's.",
            show_default=False,
        ),
    ] = None,
    retention_ms: Annotated[
        list[str] | None,
        typer.Option(
            help="Retention of every topic but the DLQs and compacted ones (MS, -1: forever), or of one "
            "(TOPIC=MS); repeatable. Default: the table's.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create every topic of the topic table that is missing (partitions, retention, compaction, DLQs).

    Partitions and retention apply when a topic is created; existing topics are left as they are.
    """
    try:
        table = _sized_table(partitions or [], retention_ms or [])
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        given = {"bootstrap_servers": bootstrap, "topic_prefix": prefix}
        # The rest (security above all) from KAFKA_*, as the services read it.
        kafka = KafkaSettings.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        if any(e["loc"] == ("bootstrap_servers",) for e in exc.errors()):
            _fail("no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap", EXIT_USAGE)
        _fail([str(e["msg"]) for e in exc.errors()], EXIT_USAGE)
    # aiokafka logs each failed connection attempt; the failure is said once, below.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        created = asyncio.run(
            ensure_topics(
                kafka.bootstrap_servers,
                table,
                kafka.topic_prefix,
                replication_factor,
                options=client_options(kafka),
            )
        )
    except (KafkaError, OSError) as exc:
        _fail(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}", EXIT_UNREACHABLE)
    typer.echo(f"created {', '.join(created)}" if created else "every topic exists")


def _sized_table(partitions: list[str], retention_ms: list[str]) -> TopicTable:
    """The topic table with ``--partitions`` and ``--retention-ms`` applied; ValueError saying what is wrong."""

    def parse(option: str, given: list[str]) -> tuple[int | None, dict[Topic, int]]:
        every: int | None = None
        each: dict[Topic, int] = {}
        for text in given:
            name, _, number = text.rpartition("=")
            try:
                value = int(number)
            except ValueError:
                raise ValueError(f"{option} {text!r}: expected a number, or TOPIC=number") from None
            if not name:
                every = value
                continue
            if name not in Topic.__members__.values():
                known = ", ".join(sorted(Topic))
                raise ValueError(f"{option} {text!r}: no topic {name!r} in the topic table (one of {known})")
            each[Topic(name)] = value
        return every, each

    every_count, counts = parse("--partitions", partitions)
    every_retention, retentions = parse("--retention-ms", retention_ms)
    return sized(
        load_topic_table(),
        partitions=every_count,
        retention_ms=every_retention,
        topic_partitions=counts,
        topic_retention_ms=retentions,
    )


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
        _fail("no database configured: set POSTGRES_DSN or pass --dsn", EXIT_USAGE)
    serve_service(lambda: settings, run_api)

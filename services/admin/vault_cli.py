"""``duplex keys``: the vault's key-encryption keys.

Exit codes as for the rest of ``duplex``: 0 success; 1 invalid request (``VAULT_KEYS`` missing or
malformed, data keys the keyring cannot unwrap); 2 the database cannot be reached or used.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from services.admin.config_store import DATABASE_ERRORS, explain_database_error
from services.admin.settings import load_settings
from services.common.vault import Keyring, RotationReport, Vault, VaultSettings

# A malformed DSN fails in asyncpg's parser with a ValueError.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, ValueError)

EXIT_INVALID = 1
EXIT_USAGE = 2
# As the rest of the CLI (docs/cli.md): a missing setting is usage, an unreachable database is 4.
EXIT_UNREACHABLE = 4

keys_app = typer.Typer(help="Manage the vault's key-encryption keys (VAULT_KEYS).", no_args_is_help=True)


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _keyring() -> tuple[Keyring, int]:
    try:
        settings = VaultSettings()
    except ValidationError as exc:
        _fail([f"VAULT_KEYS: {error['msg']}" for error in exc.errors()], EXIT_INVALID)
    return Keyring.from_settings(settings), settings.rotation_batch_size


async def _rotate(dsn: str, keyring: Keyring, batch_size: int, connect_timeout: float) -> RotationReport:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, timeout=connect_timeout)
    try:
        vault = Vault(pool, keyring, batch_size=batch_size)
        pending = await vault.pending_rotation()
        # On stderr, so stdout carries only the result line.
        columns = (TextColumn("re-wrapping data keys"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("rotate", total=pending)
            return await vault.rotate(progress=lambda done: progress.advance(task, done))
    finally:
        await pool.close()


@keys_app.command("rotate")
def rotate(
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="PostgreSQL DSN; defaults to $POSTGRES_DSN.", show_default=False)
    ] = None,
) -> None:
    """Re-wrap every tenant's data key under the current key (the first of VAULT_KEYS).

    Safe while services run and safe to repeat; values are not re-encrypted. Keep the old key in
    VAULT_KEYS (after the new one) until this reports every key current.
    """
    keyring, batch_size = _keyring()
    settings = load_settings(dsn)
    if settings.postgres_dsn is None:
        _fail(["no database configured: set POSTGRES_DSN or pass --dsn"], EXIT_USAGE)
    url = settings.postgres_dsn.get_secret_value()
    try:
        report = asyncio.run(_rotate(url, keyring, batch_size, settings.connect_timeout_seconds))
    except _CONNECT_ERRORS as exc:
        _fail([str(explain_database_error(exc, url))], EXIT_UNREACHABLE)
    typer.echo(
        f"re-wrapped {report.rewrapped} data keys under key {keyring.current!r}"
        f" ({report.already_current} already current)"
    )
    if not report.complete:
        _fail(
            [
                f"{len(report.unreadable)} data keys could not be unwrapped with the keys in VAULT_KEYS"
                f" (tenants: {', '.join(report.unreadable)}); add the key that wraps them and run again"
            ],
            EXIT_INVALID,
        )

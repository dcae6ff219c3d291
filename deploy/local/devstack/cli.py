"""``python -m devstack``: install, up, down, status and migrate the local stack."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from devstack import install as installer
from devstack import stack
from devstack.paths import DEFAULT_STATE_DIR, MIGRATIONS_DIR, POSTGRES_BIN_DIR
from devstack.state import ENV_FILE, load_state
from services.common.db import migrate as run_migrations

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", help="Where the stack keeps its data, logs, ports and pids."),
]


@app.command()
def install() -> None:
    """Fetch Kafka's jars (once) and make sure PostgreSQL 15 and Chromium (for the console's tests) are installed."""
    try:
        libs = installer.install_kafka()
        installer.ensure_java()
        installer.ensure_postgres()
        chromium = installer.ensure_chromium()
    except installer.InstallError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"kafka jars: {libs}")
    typer.echo(f"postgresql: {POSTGRES_BIN_DIR}")
    typer.echo(f"chromium: {chromium}")


@app.command()
def up(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    topic_prefix: Annotated[str, typer.Option(help="Prepended to every physical topic name.")] = "",
) -> None:
    """Start Kafka and PostgreSQL on 127.0.0.1, create the topics, run the migrations."""
    began = time.monotonic()
    result = asyncio.run(stack.up(state_dir, topic_prefix=topic_prefix))
    state = result.state
    typer.echo(f"kafka     {state.bootstrap_servers}  (pid {state.processes['kafka'].pid})")
    typer.echo(f"postgres  127.0.0.1:{state.postgres_port}/duplex  (pid {state.processes['postgres'].pid})")
    typer.echo(f"started   {', '.join(result.started) or 'nothing (already running)'}")
    typer.echo(f"topics    {len(result.topics_created)} created")
    typer.echo(f"migrated  {', '.join(result.migrations_applied) or 'nothing pending'}")
    typer.echo(f"env       set -a; . {state_dir.resolve() / ENV_FILE}; set +a")
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.timings.items())
    typer.echo(f"ready in {time.monotonic() - began:.1f}s ({phases}, from launch)")


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop everything the stack started or that registered itself, and check nothing is left."""
    try:
        stopped = stack.down(state_dir)
    except stack.StackError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Show the registered processes and the endpoints. Exits 1 if any is not running."""
    state, rows = stack.status(state_dir)
    if not rows:
        typer.echo("nothing registered (run: python -m devstack up)")
        return
    for row in rows:
        typer.echo(f"{row.name:<20} pid {row.pid:<8} {'running' if row.running else 'STOPPED'}")
    typer.echo(f"kafka bootstrap: {state.bootstrap_servers}")
    typer.echo(f"postgres:        127.0.0.1:{state.postgres_port}/duplex")
    if not all(row.running for row in rows):
        raise typer.Exit(1)


@app.command()
def migrate(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    dsn: Annotated[
        str | None,
        typer.Option(help="Database to migrate; defaults to $POSTGRES_DSN, then the local stack's."),
    ] = None,
    directory: Annotated[Path, typer.Option(help="Folder of NNNN_name.sql files.")] = MIGRATIONS_DIR,
) -> None:
    """Apply pending schema migrations."""
    target = dsn or os.environ.get("POSTGRES_DSN") or load_state(state_dir.resolve()).dsn
    if not target:
        typer.echo("error: no DSN: pass --dsn, set POSTGRES_DSN, or run `up` first", err=True)
        raise typer.Exit(1)
    applied = asyncio.run(run_migrations(target, directory))
    typer.echo(f"applied: {', '.join(applied)}" if applied else "nothing pending")


@app.command()
def demo(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Run the demo on the running stack (``make demo`` starts the stack first)."""
    from devstack.demo import run

    raise typer.Exit(run(state_dir.resolve()))

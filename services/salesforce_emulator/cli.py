"""``python -m services.salesforce_emulator``: HTTPS (uvicorn) and gRPC in one asyncio loop.

Once both listen, prints ONE JSON line on stdout (URLs, CA path, the default org's credentials,
the admin token) and serves until SIGINT/SIGTERM, then stops both cleanly and exits 0. Logs go
to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from services.salesforce_emulator.settings import EmulatorSettings

Start = Callable[[Callable[[], EmulatorSettings]], object]
"""Serves the emulator with the settings the loader it is given returns."""

_ENV_ONLY = ("authorization_code_ttl_seconds", "default_api_version")


def _option(name: str, help_text: str, *, default: str | None = None, flag: str | None = None) -> Any:
    """A flag whose help names its SF_EMULATOR_* variable and the real default.

    The flag's own default stays None so that an unset flag leaves the variable (or the
    settings default) in charge; the displayed default is read from :class:`EmulatorSettings`.
    """
    field = EmulatorSettings.model_fields[name]
    shown = default if default is not None else str(field.default)
    env = f"SF_EMULATOR_{name.upper()}"
    decls = (flag,) if flag else ()
    return typer.Option(*decls, help=f"{help_text} Variable: {env}.", show_default=shown)


def command_line(start: Start) -> typer.Typer:
    """The emulator's command: its flags become overrides of :class:`EmulatorSettings`, then ``start``.

    ``start`` is injected (rather than imported) so that ``__main__`` hands over to the one service
    entry, :func:`services.common.service.main`, itself.
    """
    cli = typer.Typer(add_completion=False, help=__doc__)

    @cli.command(
        epilog="Only as variables: "
        + ", ".join(f"SF_EMULATOR_{n.upper()} (default {EmulatorSettings.model_fields[n].default})" for n in _ENV_ONLY)
        + "."
    )
    def main(
        context: typer.Context,
        host: Annotated[str | None, _option("host", "Interface to listen on.")] = None,
        https_port: Annotated[int | None, _option("https_port", "HTTPS (or HTTP) port; 0 picks a free one.")] = None,
        grpc_port: Annotated[int | None, _option("grpc_port", "Pub/Sub gRPC port; 0 picks a free one.")] = None,
        data_file: Annotated[str | None, _option("data_file", "SQLite data file, or :memory:.")] = None,
        seed_file: Annotated[Path | None, _option("seed_file", "YAML seed of orgs, users and apps.")] = None,
        tls: Annotated[
            bool | None, _option("tls", "Serve HTTPS and TLS gRPC.", default="--tls", flag="--tls/--no-tls")
        ] = None,
        tls_dir: Annotated[
            Path | None,
            _option(
                "tls_dir",
                "Where the local CA and certificate live.",
                default="'tls' next to the data file; var/emulator/tls with :memory:",
            ),
        ] = None,
        access_token_ttl_seconds: Annotated[
            int | None, _option("access_token_ttl_seconds", "Session lifetime.")
        ] = None,
        event_retention_hours: Annotated[
            float | None, _option("event_retention_hours", "Pub/Sub event retention.")
        ] = None,
        admin_token: Annotated[
            str | None,
            _option("admin_token", "Bearer token of /__emulator__/.", default="random, printed on the start-up line"),
        ] = None,
    ) -> None:
        """Start the Salesforce emulator. Flags override SF_EMULATOR_* variables."""
        overrides = {name: value for name, value in context.params.items() if value is not None}
        start(functools.partial(EmulatorSettings, **overrides))

    return cli

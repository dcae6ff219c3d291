"""``python -m services.salesforce_emulator``: HTTPS (uvicorn) and gRPC in one asyncio loop.

Once both listen, prints ONE JSON line on stdout (URLs, CA path, the default org's credentials,
the admin token) and serves until SIGINT/SIGTERM, then stops both cleanly and exits 0. Logs go
to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from services.salesforce_emulator.app import build_app
from services.salesforce_emulator.settings import EmulatorSettings

log = logging.getLogger("services.salesforce_emulator")

cli = typer.Typer(add_completion=False, help=__doc__)


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: the entry point stops HTTP and gRPC together."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def _listen(host: str, port: int) -> socket.socket:
    # Binding here (rather than in uvicorn) lets port 0 pick a free port we can report.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0): asyncio only sets TCP_NODELAY on accepted sockets whose listener says TCP,
    # and without it every response waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def serve(settings: EmulatorSettings) -> None:
    """Run until a stop signal arrives."""
    http_socket = _listen(settings.host, settings.https_port)
    updates: dict[str, Any] = {"https_port": http_socket.getsockname()[1]}
    if settings.grpc_port == 0:
        updates["grpc_port"] = _free_port(settings.host)
    settings = settings.model_copy(update=updates)
    emulator = build_app(settings)
    try:
        grpc_server = emulator.build_grpc_server()
        await grpc_server.start()
        config = uvicorn.Config(
            emulator.app,
            ssl_certfile=str(emulator.tls.server_cert) if emulator.tls else None,
            ssl_keyfile=str(emulator.tls.server_key) if emulator.tls else None,
            lifespan="off",
            # Access logs would print query strings, and /revoke and /userinfo accept tokens there.
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        http = _Server(config)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            http.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        http_task = asyncio.create_task(http.serve(sockets=[http_socket]))
        ready = asyncio.create_task(http.ready.wait())
        await asyncio.wait((ready, http_task), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if http.started:
            print(json.dumps(emulator.startup_info()), flush=True)  # noqa: T201 (the start-up contract)
            log.info("emulator serving on %s and grpc %s", emulator.instance_url, emulator.grpc_address)
        await http_task
        await grpc_server.stop(grace=2)
    finally:
        emulator.close()
        http_socket.close()


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


_ENV_ONLY = ("authorization_code_ttl_seconds", "default_api_version")


@cli.command(
    epilog="Only as variables: "
    + ", ".join(f"SF_EMULATOR_{n.upper()} (default {EmulatorSettings.model_fields[n].default})" for n in _ENV_ONLY)
    + "."
)
def main(
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
    access_token_ttl_seconds: Annotated[int | None, _option("access_token_ttl_seconds", "Session lifetime.")] = None,
    event_retention_hours: Annotated[float | None, _option("event_retention_hours", "Pub/Sub event retention.")] = None,
    admin_token: Annotated[
        str | None,
        _option("admin_token", "Bearer token of /__emulator__/.", default="random, printed on the start-up line"),
    ] = None,
) -> None:
    """Start the Salesforce emulator. Flags override SF_EMULATOR_* variables."""
    overrides = {name: value for name, value in locals().items() if value is not None}
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = EmulatorSettings(**overrides)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    cli()

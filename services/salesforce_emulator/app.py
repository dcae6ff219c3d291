"""The composition root: ``build_app(settings)`` wires orgs, sessions, the record store, the event
log, the HTTP APIs and the gRPC server into one :class:`Emulator`; :func:`run` serves it over
HTTPS (uvicorn) and gRPC in one asyncio loop.

Every call under ``/services/data/vXX.X/`` passes the :class:`ApiGateway` first, which does what
Salesforce's front door does before a handler runs: judge the version (410 GONE when retired, 404
NOT_FOUND when unknown or for a resource that version does not have yet; see :mod:`.versions`), authenticate
the Bearer token (401 INVALID_SESSION_ID), pass the :class:`~services.salesforce_emulator.gateway.FrontDoor` (injected
latency and outages, 503 SERVER_UNAVAILABLE; the rolling 24-hour allocation, 403
REQUEST_LIMIT_EXCEEDED when exhausted) and stamp ``Sforce-Limit-Info`` on the response. After a
write committed, it may lose the answer (the ``ambiguous_commit_ratio`` fault). SOAP data
calls pass the same front door. Handlers receive the resulting
:class:`~services.salesforce_emulator.context.CallContext` through the ``call_context`` dependency.

Every HTTP response, whichever router or error handler made it, leaves with Salesforce's header-name
spelling (:mod:`.wire`) and, when it is an error, Salesforce's error body (:mod:`.errors`).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_server import Listener
from services.common.service import Health, Running
from services.common.telemetry import Telemetry
from services.salesforce_emulator import ids
from services.salesforce_emulator.admin_api import build_admin_router
from services.salesforce_emulator.bulk_ingest import build_bulk_ingest_router
from services.salesforce_emulator.bulk_query import build_bulk_query_router
from services.salesforce_emulator.context import ApiName, CallContext, parse_call_options
from services.salesforce_emulator.errors import SalesforceError, install_error_handlers, invalid_session
from services.salesforce_emulator.event_log import EventLog
from services.salesforce_emulator.gateway import LIMIT_HEADER, FrontDoor, server_unavailable
from services.salesforce_emulator.limits import (
    DAILY_BULK_API_BATCHES,
    DAILY_BULK_V2_QUERY_JOBS,
    UsageMeter,
    build_limits_router,
)
from services.salesforce_emulator.oauth import OAuthService, TokenStore, build_oauth_router
from services.salesforce_emulator.orgs import Org, OrgError, OrgRegistry, OrgRepository
from services.salesforce_emulator.pubsub import build_pubsub_server
from services.salesforce_emulator.query_api import QueryService, build_query_router, run_query_url
from services.salesforce_emulator.rest import build_data_router
from services.salesforce_emulator.seed import SeedFile, apply_seed, load_seed
from services.salesforce_emulator.settings import EmulatorSettings
from services.salesforce_emulator.soap import build_soap_router
from services.salesforce_emulator.store import RecordStore
from services.salesforce_emulator.tls import TlsFiles, ensure_certificates
from services.salesforce_emulator.tooling import build_tooling_router
from services.salesforce_emulator.versions import build_versions_router, check_resource, check_version
from services.salesforce_emulator.wire import SalesforceApp

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Open gRPC calls (Pub/Sub subscriptions) get this long to finish when the emulator stops.
GRPC_STOP_GRACE_SECONDS = 2.0

# Any ``/services/data/v…`` path: the version part is judged (served, retired or unknown) by check_version.
_API_PATH = re.compile(r"^/services/data/v(?P<version>[^/]*)(?P<rest>/.*)?$")


def call_context(request: Request) -> CallContext:
    """FastAPI dependency: the authenticated call, as established by :class:`ApiGateway`."""
    ctx = request.scope.get("state", {}).get("call_context")
    if not isinstance(ctx, CallContext):
        raise invalid_session()
    return ctx


# The calls that may write; their answer is what an ambiguous commit loses.
_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class InjectedDisconnectError(Exception):
    """The ``disconnect`` ambiguous commit: the server closes the connection mid-answer."""


def _api_name(path: str) -> ApiName:
    return "bulkapi" if "/jobs/ingest" in path else "rest"


class ApiGateway:
    """ASGI middleware in front of the versioned REST and Bulk APIs (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        oauth: OAuthService,
        orgs: OrgRegistry,
        front_door: FrontDoor,
    ) -> None:
        self._app = app
        self._oauth = oauth
        self._orgs = orgs
        self._front_door = front_door
        self._usage = front_door.usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _API_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self._app(scope, receive, send)
            return
        try:
            # A retired version is gone for everyone, signed in or not: 410 before authentication.
            version = check_version(match["version"])
        except SalesforceError as error:
            await JSONResponse(error.rest_body(), status_code=error.http_status)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        session = self._oauth.authenticate(token.strip()) if scheme.lower() in ("bearer", "oauth") else None
        org = self._orgs.find(session.org_id) if session else None
        if session is None or org is None:
            await JSONResponse(invalid_session().rest_body(), status_code=401)(scope, receive, send)
            return
        client = parse_call_options(headers.get("sforce-call-options"))
        try:
            used, maximum = await self._front_door.admit(org, client)
            segments = [s for s in (match["rest"] or "").split("/") if s]
            check_resource(version, scope["method"], segments)
        except SalesforceError as error:
            await self._reply(error, org, scope, receive, send)
            return
        scope.setdefault("state", {})["call_context"] = CallContext(
            org_id=org.org_id,
            user_id=session.user_id,
            api_version=version,
            api_name=_api_name(scope["path"]),
            client=client,
        )
        limit_info = f"api-usage={used}/{maximum}"
        extra_limit = self._extra_limit(scope)
        may_write = scope["method"] in _WRITE_METHODS
        lost = False

        async def send_with_usage(message: Message) -> None:
            nonlocal lost
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[LIMIT_HEADER] = limit_info
                if extra_limit is not None and message["status"] < 300:
                    self._usage.record(org.org_id, 1, extra_limit)
                if may_write and message["status"] < 300 and org.faults.next_commit_ambiguous():
                    lost = True
                    if org.faults.ambiguous_commit_mode == "disconnect":
                        # The status line goes out, the body never does: the server drops the connection.
                        await send(message)
                        raise InjectedDisconnectError(scope["path"])
                    await self._reply(server_unavailable(), org, scope, receive, send)
                    return
            if lost:
                return  # the committed answer's body, swallowed
            await send(message)

        await self._app(scope, receive, send_with_usage)

    @staticmethod
    def _extra_limit(scope: Scope) -> str | None:
        """Bulk calls that also consume their own daily allocation."""
        path, method = scope["path"].rstrip("/"), scope["method"]
        if method == "POST" and path.endswith("/jobs/query"):
            return DAILY_BULK_V2_QUERY_JOBS
        if method == "PUT" and path.endswith("/batches"):
            return DAILY_BULK_API_BATCHES
        return None

    async def _reply(self, error: SalesforceError, org: Org, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error.rest_body(), status_code=error.http_status, headers={LIMIT_HEADER: self._usage.header(org)}
        )
        await response(scope, receive, send)


@dataclass
class Emulator:
    """One running emulated Salesforce: HTTP app, orgs, sessions, records, events, gRPC."""

    settings: EmulatorSettings
    app: FastAPI
    orgs: OrgRegistry
    oauth: OAuthService
    usage: UsageMeter
    store: RecordStore
    event_log: EventLog
    tls: TlsFiles | None
    seed: SeedFile | None
    instance_url: str
    _db: sqlite3.Connection

    @property
    def default_org(self) -> Org:
        return self.orgs.default_org

    @property
    def grpc_address(self) -> str:
        return f"{public_host(self.settings.host)}:{self.settings.grpc_port}"

    def authenticate_pubsub(self, access_token: str, instance_url: str, tenant_id: str) -> str:
        """Pub/Sub metadata check: a live session, for the org named by ``tenantid`` when given."""
        del instance_url  # Salesforce routes by it; one emulator serves every org on one URL.
        session = self.oauth.authenticate(access_token)
        if session is None:
            msg = "invalid or expired session"
            raise PermissionError(msg)
        if tenant_id and not (len(tenant_id) in (15, 18) and ids.same(tenant_id, session.org_id)):
            msg = "tenantid does not match the session's org"
            raise PermissionError(msg)
        return session.org_id

    def build_grpc_server(self) -> grpc.aio.Server:
        """The Pub/Sub gRPC server (not started); call from the loop that will run it."""
        return build_pubsub_server(
            self.settings.host,
            self.settings.grpc_port,
            tls=self.tls.cert_and_key() if self.tls else None,
            log=self.event_log,
            schema_for=self.orgs.schema_for,
            authenticate=self.authenticate_pubsub,
        )

    def startup_info(self) -> dict[str, Any]:
        """What a client needs to connect: the one JSON line ``__main__`` prints."""
        org = self.default_org
        spec = next((o for o in self.seed.orgs if o.alias == org.alias), None) if self.seed else None
        user = spec.users[0] if spec and spec.users else None
        client = spec.clients[0] if spec and spec.clients else None
        return {
            "instance_url": self.instance_url,
            "login_url": self.instance_url,
            "grpc": self.grpc_address,
            "grpc_tls": self.tls is not None,
            "ca_cert": str(self.tls.ca_cert.resolve()) if self.tls else None,
            "api_version": self.settings.default_api_version,
            "org_alias": org.alias,
            "org_id": org.org_id,
            "user_id": org.default_user.user_id,
            "username": org.default_user.username,
            "password": user.password.get_secret_value() if user else None,
            "client_id": client.client_id if client else None,
            "client_secret": client.client_secret.get_secret_value() if client else None,
            "admin_token": self.settings.admin_token.get_secret_value(),
            "data_file": self.settings.data_file,
            "event_retention_hours": self.settings.event_retention_hours,
        }

    def close(self) -> None:
        self.store.close()
        self.event_log.close()
        self._db.close()


def public_host(host: str) -> str:
    """The host clients should dial: a wildcard bind address is reached through loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")
    return db


def build_app(settings: EmulatorSettings, *, clock: Clock = time.time) -> Emulator:
    """Wire one emulator from its settings. Creates the data folder and TLS files as needed."""
    if not settings.in_memory:
        Path(settings.data_file).parent.mkdir(parents=True, exist_ok=True)
    db = _open_db(settings.data_file)
    db_lock = threading.Lock()
    orgs = OrgRegistry(OrgRepository(db, db_lock))
    seed = load_seed(settings.seed_file) if settings.seed_file is not None else None
    if seed is not None:
        apply_seed(orgs, seed)
    try:
        orgs.default_org  # noqa: B018 (fail at start-up, not on the first request)
    except OrgError as exc:
        msg = "the emulator has no orgs: configure a seed file (SF_EMULATOR_SEED_FILE)"
        raise OrgError(msg) from exc

    tls = ensure_certificates(settings.resolved_tls_dir(), (settings.host,)) if settings.tls else None
    instance_url = f"{settings.scheme}://{public_host(settings.host)}:{settings.https_port}"
    oauth = OAuthService(
        orgs,
        TokenStore(db, db_lock),
        login_url=instance_url,
        instance_url=instance_url,
        access_token_ttl=settings.access_token_ttl_seconds,
        code_ttl=settings.authorization_code_ttl_seconds,
        clock=clock,
    )
    usage = UsageMeter(orgs, clock)
    front_door = FrontDoor(usage)
    event_log = EventLog(
        orgs.schema_for,
        path=None if settings.in_memory else settings.data_file,
        retention_seconds=settings.event_retention_hours * 3600,
        clock=clock,
    )
    store = RecordStore(
        settings.data_file,
        schema_for=orgs.schema_for,
        faults_for=orgs.faults_for,
        sink=event_log,
        readonly_fields_for=orgs.readonly_fields_for,
        metadata_records_for=orgs.metadata_records,
        clock=clock,
    )

    app = SalesforceApp(title="Salesforce emulator", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(build_versions_router(call_context, oauth.identity_url))
    app.include_router(build_oauth_router(oauth))
    app.include_router(build_soap_router(orgs, oauth, store, front_door, clock=clock))
    app.include_router(build_limits_router(usage, orgs, call_context))
    app.include_router(
        build_admin_router(
            admin_token=settings.admin_token.get_secret_value(),
            orgs=orgs,
            usage=usage,
            oauth=oauth,
            events=event_log,
            reset_records=store.reset_org,
            clock=clock,
        )
    )
    # One query service, so that Composite query subrequests and the query resource share cursors.
    queries = QueryService.with_clock(store, orgs.schema_for, clock)
    app.include_router(
        build_data_router(
            store,
            call_context,
            query_handler=lambda ctx, url, headers: run_query_url(queries, ctx, url, headers),
        )
    )
    app.include_router(build_bulk_ingest_router(store, call_context))
    app.include_router(build_query_router(store, orgs.schema_for, call_context, service=queries, clock=clock))
    app.include_router(build_bulk_query_router(store, orgs.schema_for, call_context, clock=clock))
    app.include_router(build_tooling_router(orgs, call_context, clock=clock))
    app.add_middleware(ApiGateway, oauth=oauth, orgs=orgs, front_door=front_door)

    return Emulator(
        settings=settings,
        app=app,
        orgs=orgs,
        oauth=oauth,
        usage=usage,
        store=store,
        event_log=event_log,
        tls=tls,
        seed=seed,
        instance_url=instance_url,
        _db=db,
    )


@dataclass(frozen=True, kw_only=True)
class RunningEmulator(Running):
    emulator: Emulator


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def run(settings: EmulatorSettings, telemetry: Telemetry | None = None) -> AsyncIterator[RunningEmulator]:
    """The emulator serving HTTP(S) and gRPC until the block exits.

    Once both listen, prints ONE JSON line on stdout (URLs, CA path, the default org's credentials,
    the admin token): the start-up contract its clients read. Logs go to stderr, so stdout stays
    machine-readable.
    """
    # The emulator stands in for Salesforce: Duplex's metrics and traces have nothing to say about it.
    del telemetry
    async with AsyncExitStack() as stack:
        listener = Listener(settings.host, settings.https_port)
        stack.callback(listener.close)
        settings = settings.model_copy(
            update={"https_port": listener.port, "grpc_port": settings.grpc_port or _free_port(settings.host)}
        )
        emulator = build_app(settings)
        stack.callback(emulator.close)
        grpc_server = emulator.build_grpc_server()
        await grpc_server.start()
        stack.push_async_callback(grpc_server.stop, GRPC_STOP_GRACE_SECONDS)
        await stack.enter_async_context(
            listener.serve(
                emulator.app,
                ssl_certfile=str(emulator.tls.server_cert) if emulator.tls else None,
                ssl_keyfile=str(emulator.tls.server_key) if emulator.tls else None,
                # Salesforce's Date is spelt "Date": the app stamps it (wire.py).
                date_header=False,
            )
        )
        print(json.dumps(emulator.startup_info()), flush=True)  # noqa: T201 (the start-up contract)
        log.info("emulator serving on %s and grpc %s", emulator.instance_url, emulator.grpc_address)
        yield RunningEmulator(health=Health(ready=(listener.serving,)), emulator=emulator)

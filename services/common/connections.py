"""A tenant's Salesforce connection: its state (``salesforce_connections``) and, for services, the
sessions of ``oauth_pkce`` tenants, read from the vault.

The admin API's connect flow stores a grant: the refresh and access tokens in the vault
(:func:`services.common.vault.store_grant`) and a ``connected`` row here. Every service then takes
the tenant's access token from the vault through :class:`VaultSessions`; a refused token is
refreshed once for every replica (:class:`services.common.vault.SharedSession`).

Statuses (no row is ``not_connected``):

- ``connected``: the tokens work, as far as anyone knows.
- ``needs_reconnect``: Salesforce refused the refresh token (``invalid_grant``: revoked by an org
  admin, expired by policy, the user deactivated...). Only connecting again helps, so no service
  asks Salesforce again until then; the service that found out writes a ``connection.needs_reconnect``
  sync-log row.
- ``error``: a refresh failed otherwise (``invalid_client`` after a secret rotation...); the next
  refresh tries again and a success clears it.
- ``revoked``: revoked through the admin API (or with the tenant's deletion).

A service that cannot get a session raises :class:`ConnectionUnavailableError` for that tenant
alone; it never stops the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

from services.common import sync_log
from services.common.db import Connection
from services.common.metrics import Metrics
from services.common.salesforce_oauth import (
    PRODUCTION_LOGIN_URL,
    ConnectedApp,
    OAuthError,
    ReconnectNeeded,
    SalesforceOAuth,
    Token,
)
from services.common.tenant_config import SalesforceSpec, SecretValue
from services.common.vault import SessionToken, SharedSession, Vault

log = logging.getLogger(__name__)

SecretLookup = Callable[[SecretValue], str]
VAULT_NOT_CONFIGURED = "vault_not_configured"


class ConnectionStatus(StrEnum):
    NOT_CONNECTED = "not_connected"
    CONNECTED = "connected"
    NEEDS_RECONNECT = "needs_reconnect"
    REVOKED = "revoked"
    ERROR = "error"


# Only connecting the tenant (again) ends these; checking for that costs no call to Salesforce.
AWAITING_CONNECT = frozenset(
    {ConnectionStatus.NOT_CONNECTED, ConnectionStatus.NEEDS_RECONNECT, ConnectionStatus.REVOKED}
)


def authorize_path(tenant_id: str) -> str:
    return f"/api/v1/tenants/{tenant_id}/connection:authorize"


@dataclass(frozen=True)
class SalesforceConnection:
    tenant_id: str
    status: ConnectionStatus
    org_id: str | None = None
    user_id: str | None = None
    username: str | None = None
    instance_url: str | None = None
    scopes: tuple[str, ...] = ()
    connected_at: datetime | None = None
    connected_by: str | None = None
    last_refresh_at: datetime | None = None
    last_error: str | None = None


class ConnectionUnavailableError(Exception):
    """The tenant's org cannot be called with what Duplex holds; the message says what would help.

    ``reason`` is a :class:`ConnectionStatus` value, or ``vault_not_configured``.
    """

    def __init__(self, tenant_id: str, reason: str, message: str) -> None:
        super().__init__(f"tenant {tenant_id}: {message}")
        self.tenant_id = tenant_id
        self.reason = reason

    @property
    def awaits_connect(self) -> bool:
        """Only a connect through the admin API helps, and noticing it is cheap: check again soon."""
        return self.reason in AWAITING_CONNECT


def login_url(spec: SalesforceSpec) -> str:
    """Where the tenant's users log in and tokens are issued: its ``loginUrl`` (a sandbox's
    test.salesforce.com, a My Domain), else production's login.salesforce.com."""
    return spec.login_url or PRODUCTION_LOGIN_URL


def connected_app(spec: SalesforceSpec, secrets: SecretLookup, *, redirect_uri: str | None = None) -> ConnectedApp:
    """The tenant's connected app; its client secret is resolved now (LookupError when it cannot be)."""
    auth = spec.auth
    secret = secrets(auth.client_secret) if auth.client_secret is not None else None
    return ConnectedApp(
        client_id=auth.client_id, client_secret=secret, redirect_uri=redirect_uri, login_url=login_url(spec)
    )


# ----------------------------------------------------------------------------------------------
# salesforce_connections


_COLUMNS = (
    "tenant_id, status, org_id, user_id, username, instance_url, scopes, connected_at, connected_by,"
    " last_refresh_at, last_error"
)


def _connection(row: Any) -> SalesforceConnection:
    return SalesforceConnection(
        tenant_id=row["tenant_id"],
        status=ConnectionStatus(row["status"]),
        org_id=row["org_id"],
        user_id=row["user_id"],
        username=row["username"],
        instance_url=row["instance_url"],
        scopes=tuple(row["scopes"]),
        connected_at=row["connected_at"],
        connected_by=row["connected_by"],
        last_refresh_at=row["last_refresh_at"],
        last_error=row["last_error"],
    )


async def read_connection(db: Connection, tenant_id: str) -> SalesforceConnection:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM salesforce_connections WHERE tenant_id = $1", tenant_id)
    if row is None:
        return SalesforceConnection(tenant_id, ConnectionStatus.NOT_CONNECTED)
    return _connection(row)


async def record_connected(
    db: Connection,
    tenant_id: str,
    *,
    org_id: str,
    user_id: str,
    username: str,
    instance_url: str,
    scopes: Sequence[str],
    actor: str,
) -> SalesforceConnection:
    """A (re)connect: everything about the grant is replaced."""
    row = await db.fetchrow(
        "INSERT INTO salesforce_connections AS c"
        " (tenant_id, status, org_id, user_id, username, instance_url, scopes, connected_at, connected_by,"
        "  last_refresh_at, last_error, updated_at)"
        " VALUES ($1, 'connected', $2, $3, $4, $5, $6, now(), $7, now(), NULL, now())"
        " ON CONFLICT (tenant_id) DO UPDATE SET status = 'connected', org_id = $2, user_id = $3, username = $4,"
        "  instance_url = $5, scopes = $6, connected_at = now(), connected_by = $7, last_refresh_at = now(),"
        "  last_error = NULL, updated_at = now()"
        f" RETURNING {_COLUMNS}",
        tenant_id,
        org_id,
        user_id,
        username,
        instance_url,
        list(scopes),
        actor,
    )
    return _connection(row)


async def record_refreshed(db: Connection, tenant_id: str) -> None:
    """A refresh succeeded: an ``error`` is over."""
    await db.execute(
        "UPDATE salesforce_connections SET status = 'connected', last_refresh_at = now(), last_error = NULL,"
        " updated_at = now() WHERE tenant_id = $1 AND status IN ('connected', 'error')",
        tenant_id,
    )


async def record_failure(db: Connection, tenant_id: str, status: ConnectionStatus, error: str) -> bool:
    """A refresh failed: ``needs_reconnect`` or ``error``. False when the connection was not in use
    (revoked meanwhile, or already waiting for a reconnect), and then nothing changes."""
    changed = await db.fetchval(
        "UPDATE salesforce_connections SET status = $2, last_error = $3, updated_at = now()"
        " WHERE tenant_id = $1 AND status IN ('connected', 'error') RETURNING true",
        tenant_id,
        str(status),
        error,
    )
    return bool(changed)


async def record_revoked(db: Connection, tenant_id: str, error: str | None = None) -> bool:
    """The tokens are forgotten; ``error`` tells why Salesforce may still hold them. False when there
    was no connection to revoke."""
    changed = await db.fetchval(
        "UPDATE salesforce_connections SET status = 'revoked', last_error = $2, updated_at = now()"
        " WHERE tenant_id = $1 AND status <> 'revoked' RETURNING true",
        tenant_id,
        error,
    )
    return bool(changed)


# ----------------------------------------------------------------------------------------------
# Sessions for services


class VaultSessions:
    """The sessions of ``oauth_pkce`` tenants, for the Salesforce clients of one service process.

    ``service`` signs the sync-log rows it writes; ``secrets`` resolve the connected app's client
    secret from the tenant's configuration, as for the other modes.
    """

    def __init__(
        self,
        vault: Vault,
        *,
        service: str,
        http: httpx.AsyncClient,
        secrets: SecretLookup,
        metrics: Metrics | None = None,
    ) -> None:
        self.vault = vault
        self.service = service
        self.http = http
        self.secrets = secrets
        self.metrics = metrics

    def for_tenant(self, tenant_id: str, spec: SalesforceSpec) -> TenantSession:
        return TenantSession(self, tenant_id, spec)


class TenantSession:
    """One tenant's access token from the vault: :meth:`current` to start, :meth:`refreshed` after a 401.

    Both check the connection first, so a tenant waiting for a connect costs one query and no call
    to Salesforce, and a connect made while the service runs is found on the next attempt.
    """

    def __init__(self, sessions: VaultSessions, tenant_id: str, spec: SalesforceSpec) -> None:
        self._sessions = sessions
        self._tenant_id = tenant_id
        self._spec = spec
        self._shared = SharedSession(sessions.vault, tenant_id, self._refresh)

    def __repr__(self) -> str:
        return f"TenantSession(tenant={self._tenant_id!r})"

    async def current(self) -> SessionToken:
        await self._usable()
        return self._served(await self._shared.current())

    async def refreshed(self, stale: SessionToken) -> SessionToken:
        await self._usable()
        return self._served(await self._shared.refreshed(stale))

    async def _read(self) -> SalesforceConnection:
        async with self._sessions.vault.pool.acquire() as conn:
            return await read_connection(conn, self._tenant_id)

    async def _usable(self) -> None:
        connection = await self._read()
        if connection.status in AWAITING_CONNECT:
            raise self._unavailable(connection)

    def _served(self, token: SessionToken) -> SessionToken:
        self._flag(needs_reconnect=False)
        return token

    def _flag(self, *, needs_reconnect: bool) -> None:
        if self._sessions.metrics is not None:
            self._sessions.metrics.connection_needs_reconnect.labels(tenant=self._tenant_id).set(int(needs_reconnect))

    def _unavailable(self, connection: SalesforceConnection) -> ConnectionUnavailableError:
        tenant = self._tenant_id
        again = f"an admin connects it with POST {authorize_path(tenant)}"
        status = connection.status
        if status is ConnectionStatus.NEEDS_RECONNECT:
            self._flag(needs_reconnect=True)
            message = f"Salesforce refused its refresh token ({connection.last_error}); {again}"
        elif status is ConnectionStatus.REVOKED:
            message = f"its Salesforce connection was revoked; {again}"
        elif status is ConnectionStatus.NOT_CONNECTED:
            message = f"it is not connected to Salesforce yet; {again}"
        else:
            # Connected, yet the vault holds no refresh token (deleted by hand): as good as never connected.
            status = ConnectionStatus.NOT_CONNECTED
            message = f"the vault holds no refresh token for it; {again}"
        return ConnectionUnavailableError(tenant, str(status), message)

    async def _refresh(self, refresh_token: str | None) -> Token:
        # Runs under SharedSession's lock, which a connect or revoke also takes: the status read
        # here and the refresh token agree.
        connection = await self._read()
        if connection.status in AWAITING_CONNECT or refresh_token is None:
            raise self._unavailable(connection)
        sessions = self._sessions
        oauth = SalesforceOAuth(connected_app(self._spec, sessions.secrets), sessions.http)
        try:
            token = await oauth.refresh(refresh_token)
        except ReconnectNeeded as exc:
            await self._lost(exc)
            raise self._unavailable(await self._read()) from exc
        except OAuthError as exc:
            async with sessions.vault.pool.acquire() as conn:
                await record_failure(conn, self._tenant_id, ConnectionStatus.ERROR, str(exc))
            message = f"Salesforce refused to refresh its session ({exc}); Duplex tries again on the next call"
            raise ConnectionUnavailableError(self._tenant_id, str(ConnectionStatus.ERROR), message) from exc
        async with sessions.vault.pool.acquire() as conn:
            await record_refreshed(conn, self._tenant_id)
        return token

    async def _lost(self, exc: OAuthError) -> None:
        tenant = self._tenant_id
        async with self._sessions.vault.pool.acquire() as conn, conn.transaction():
            if not await record_failure(conn, tenant, ConnectionStatus.NEEDS_RECONNECT, str(exc)):
                return
            await sync_log.record(
                conn,
                tenant_id=tenant,
                service=self._sessions.service,
                event="connection.needs_reconnect",
                code=exc.error,
                message=f"Salesforce refused the refresh token ({exc}); nothing is synced with the org until an"
                f" admin connects it again (POST {authorize_path(tenant)})",
                detail={"error": exc.error, "description": exc.description},
            )
        log.warning("tenant needs to be connected again", extra={"tenant_id": tenant, "err": str(exc)})

"""A tenant's Salesforce connection: its state (``salesforce_connections``) and, for services, the
session each tenant's calls are made with.

How a tenant gets a session depends on its auth mode:

- ``oauth_pkce``: the admin API's connect flow stores a grant (the refresh and access tokens in the
  vault, :func:`services.common.vault.store_grant`, and a ``connected`` row here). Services take the
  access token from the vault; a refused one is refreshed once for every replica
  (:class:`services.common.vault.SharedSession`).
- ``password``, ``client_credentials``, ``jwt_bearer`` (*server-side*): services sign in themselves
  (:func:`sign_in`) with the credentials the tenant's document names. With a vault the access token
  is shared the same way, so replicas do not each sign in and a new sign-in happens once, under the
  lock; without one, each process signs in for itself. No refresh token exists: a refused access
  token means signing in again. Every sign-in records what it learnt here (org, user, instance).

Statuses (no row is ``not_connected``):

- ``connected``: the tokens work, as far as anyone knows.
- ``needs_reconnect`` (``oauth_pkce``): Salesforce refused the refresh token (``invalid_grant``:
  revoked by an org admin, expired by policy, the user deactivated...). Only connecting again helps,
  so no service asks Salesforce again until then; the service that found out writes a
  ``connection.needs_reconnect`` sync-log row.
- ``error``: a refresh or a sign-in was refused otherwise (``invalid_client`` after a secret
  rotation, a certificate removed from the connected app, a host or secret the deployment's policy
  forbids...). The next attempt, after the service's usual back-off, tries again and a success
  clears it. Entering it (or failing differently) writes one ``connection.error`` sync-log row.
- ``revoked``: revoked through the admin API (or with the tenant's deletion). An ``oauth_pkce``
  tenant stays revoked until it is connected again; a server-side one until a new version of its
  configuration is applied (it has no browser step to go through), and services do not sign in
  for it meanwhile.

A service that cannot get a session raises :class:`ConnectionUnavailableError` for that tenant
alone; it never stops the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from services.common import sync_log
from services.common.db import Connection, Pool
from services.common.metrics import Metrics
from services.common.salesforce_oauth import (
    PRODUCTION_LOGIN_URL,
    ConnectedApp,
    OAuthError,
    ReconnectNeeded,
    SalesforceOAuth,
    Token,
    load_private_key,
)
from services.common.tenant_config import AuthMode, SalesforceSpec, SecretValue
from services.common.tenant_config.policy import PolicyViolationError, SalesforcePolicy
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

    ``reason`` is a :class:`ConnectionStatus` value, or ``vault_not_configured``; ``code`` is the
    error of a refused sign-in or refresh (Salesforce's ``invalid_grant``..., or Duplex's own
    ``policy_violation``, ``secret_unavailable``, ``invalid_private_key``) when there was one.
    """

    def __init__(self, tenant_id: str, reason: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"tenant {tenant_id}: {message}")
        self.tenant_id = tenant_id
        self.reason = reason
        self.code = code

    @property
    def awaits_connect(self) -> bool:
        """Only an admin's action helps, and noticing it is cheap: check again soon."""
        return self.reason in AWAITING_CONNECT


def vault_not_configured(tenant_id: str) -> ConnectionUnavailableError:
    msg = "auth mode oauth_pkce keeps the tenant's tokens in the vault, and this service has no VAULT_KEYS"
    return ConnectionUnavailableError(tenant_id, VAULT_NOT_CONFIGURED, msg)


def login_url(spec: SalesforceSpec) -> str:
    """Where the tenant's users log in and tokens are issued: its ``loginUrl`` (a sandbox's
    test.salesforce.com, a My Domain), else production's login.salesforce.com."""
    return spec.login_url or PRODUCTION_LOGIN_URL


def token_url(spec: SalesforceSpec) -> str:
    """The host whose token endpoint issues the tenant's tokens (and revokes them): ``login_url``
    for ``oauth_pkce``; for the server-side modes the ``loginUrl``, else the ``instanceUrl`` (a My
    Domain, where client credentials must be asked for anyway)."""
    if spec.auth.mode.server_side:
        return spec.login_url or spec.instance_url
    return login_url(spec)


def connected_app(spec: SalesforceSpec, secrets: SecretLookup, *, redirect_uri: str | None = None) -> ConnectedApp:
    """The tenant's connected app; its client secret is resolved now (LookupError when it cannot be)."""
    auth = spec.auth
    secret = secrets(auth.client_secret) if auth.client_secret is not None else None
    return ConnectedApp(
        client_id=auth.client_id, client_secret=secret, redirect_uri=redirect_uri, login_url=token_url(spec)
    )


class SignInError(Exception):
    """A server-side sign-in that did not happen: Salesforce refused it (its ``error`` code), or
    Duplex would not even try (``policy_violation``, ``secret_unavailable``, ``invalid_private_key``)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description


async def sign_in(
    spec: SalesforceSpec, secrets: SecretLookup, http: httpx.AsyncClient, policy: SalesforcePolicy
) -> Token:
    """A new access token for a tenant that signs in server-side (password, client credentials, JWT
    bearer). Nothing is sent to a host, and no token used at an instance, that ``policy`` does not
    allow. Raises :class:`SignInError`; transport failures stay ``httpx`` errors."""
    auth = spec.auth
    url = token_url(spec)
    try:
        policy.check_url(url)
        app = connected_app(spec, secrets)
        oauth = SalesforceOAuth(app, http)
        if auth.mode is AuthMode.JWT_BEARER:
            # Guaranteed by the configuration's own checks for jwt_bearer mode.
            assert auth.username is not None
            assert auth.private_key is not None
            token = await oauth.jwt_bearer(auth.username, _private_key(secrets(auth.private_key)))
        elif auth.mode is AuthMode.PASSWORD:
            assert auth.username is not None
            assert auth.password is not None
            password = secrets(auth.password)
            if auth.security_token is not None:
                password += secrets(auth.security_token)
            token = await oauth.password(auth.username, password)
        elif auth.mode is AuthMode.CLIENT_CREDENTIALS:
            token = await oauth.client_credentials()
        else:
            msg = f"auth mode {auth.mode} does not sign in server-side"
            raise ValueError(msg)
        policy.check_url(token.instance_url)
    except PolicyViolationError as exc:
        raise SignInError("policy_violation", str(exc)) from None
    except LookupError as exc:
        raise SignInError("secret_unavailable", str(exc)) from None
    except OAuthError as exc:
        raise SignInError(exc.error, exc.description) from None
    return token


def _private_key(pem: str) -> RSAPrivateKey:
    try:
        return load_private_key(pem)
    except (ValueError, TypeError):
        # The message of the parser could quote the key's material: it is not passed on.
        raise SignInError(
            "invalid_private_key",
            "spec.salesforce.auth.privateKey does not name an unencrypted PEM RSA private key",
        ) from None


def sign_in_source(spec: SalesforceSpec) -> str:
    """A digest of everything a server-side sign-in depends on (never a secret: references only).

    Stored beside a shared access token, so that a token signed in for other settings (another
    user, another org) is not served once the tenant's configuration changed.
    """
    material = json.dumps([token_url(spec), spec.auth.model_dump(mode="json", by_alias=True)], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


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


# Revoked through the admin API since the tenant's configuration was last applied: a server-side
# tenant is not signed in until a new version is applied. (``c`` is salesforce_connections.)
_REVOKED_IN_FORCE = (
    "(c.status = 'revoked' AND c.updated_at >= coalesce("
    "(SELECT max(v.applied_at) FROM config_versions v WHERE v.tenant_id = c.tenant_id), '-infinity'))"
)


async def revoked_in_force(db: Connection, tenant_id: str) -> bool:
    """The server-side tenant was revoked and no configuration was applied since."""
    found = await db.fetchval(
        f"SELECT {_REVOKED_IN_FORCE} FROM salesforce_connections c WHERE c.tenant_id = $1", tenant_id
    )
    return bool(found)


async def record_signed_in(
    db: Connection,
    tenant_id: str,
    *,
    org_id: str | None,
    user_id: str | None,
    username: str | None,
    instance_url: str,
    scopes: Sequence[str],
    by: str,
) -> ConnectionStatus | None:
    """A server-side sign-in succeeded; call it inside a transaction. The status it replaced, or
    None when the tenant was revoked meanwhile (then nothing is recorded and the token is not to be
    used). ``connected_at`` and ``by`` change only when the tenant was not connected already."""
    row = await db.fetchrow(
        f"SELECT c.status, {_REVOKED_IN_FORCE} AS revoked FROM salesforce_connections c"
        " WHERE c.tenant_id = $1 FOR UPDATE",
        tenant_id,
    )
    if row is not None and row["revoked"]:
        return None
    await db.execute(
        "INSERT INTO salesforce_connections AS c"
        " (tenant_id, status, org_id, user_id, username, instance_url, scopes, connected_at, connected_by,"
        "  last_refresh_at, last_error, updated_at)"
        " VALUES ($1, 'connected', $2, $3, $4, $5, $6, now(), $7, now(), NULL, now())"
        " ON CONFLICT (tenant_id) DO UPDATE SET status = 'connected', org_id = $2, user_id = $3, username = $4,"
        "  instance_url = $5, scopes = $6,"
        "  connected_at = CASE WHEN c.status = 'connected' THEN c.connected_at ELSE now() END,"
        "  connected_by = CASE WHEN c.status = 'connected' THEN c.connected_by ELSE $7 END,"
        "  last_refresh_at = now(), last_error = NULL, updated_at = now()",
        tenant_id,
        org_id,
        user_id,
        username,
        instance_url,
        list(scopes),
        by,
    )
    return ConnectionStatus(row["status"]) if row is not None else ConnectionStatus.NOT_CONNECTED


async def record_sign_in_failure(db: Connection, tenant_id: str, error: str) -> bool:
    """A server-side sign-in failed: status ``error``. True when that is news (the tenant was not
    in error, or failed otherwise); False when nothing changed (the same failure again, or the
    tenant was revoked meanwhile)."""
    changed = await db.fetchval(
        "INSERT INTO salesforce_connections AS c (tenant_id, status, last_error, updated_at)"
        " VALUES ($1, 'error', $2, now())"
        " ON CONFLICT (tenant_id) DO UPDATE SET status = 'error', last_error = $2, updated_at = now()"
        f" WHERE (c.status <> 'error' OR c.last_error IS DISTINCT FROM $2) AND NOT {_REVOKED_IN_FORCE}"
        " RETURNING true",
        tenant_id,
        error,
    )
    return bool(changed)


async def record_refreshed(db: Connection, tenant_id: str) -> None:
    """A refresh succeeded: an ``error`` is over."""
    await db.execute(
        "UPDATE salesforce_connections SET status = 'connected', last_refresh_at = now(), last_error = NULL,"
        " updated_at = now() WHERE tenant_id = $1 AND status IN ('connected', 'error')",
        tenant_id,
    )


async def record_failure(db: Connection, tenant_id: str, status: ConnectionStatus, error: str) -> bool:
    """A refresh failed: ``needs_reconnect`` or ``error``. False when nothing changes: the
    connection was not in use (revoked meanwhile, or already waiting for a reconnect), or it had
    already failed this very way."""
    changed = await db.fetchval(
        "UPDATE salesforce_connections SET status = $2, last_error = $3, updated_at = now()"
        " WHERE tenant_id = $1 AND status IN ('connected', 'error')"
        " AND (status <> $2 OR last_error IS DISTINCT FROM $3) RETURNING true",
        tenant_id,
        str(status),
        error,
    )
    return bool(changed)


async def record_revoked(
    db: Connection, tenant_id: str, error: str | None = None, *, server_side: bool = False
) -> bool:
    """The tokens are forgotten; ``error`` tells why Salesforce may still hold them. False when there
    was no connection to revoke. A ``server_side`` tenant is recorded as revoked even with no
    connection yet: that is what stops services signing in for it."""
    if server_side:
        changed = await db.fetchval(
            "INSERT INTO salesforce_connections AS c (tenant_id, status, last_error, updated_at)"
            " VALUES ($1, 'revoked', $2, now())"
            " ON CONFLICT (tenant_id) DO UPDATE SET status = 'revoked', last_error = $2, updated_at = now()"
            f" WHERE NOT {_REVOKED_IN_FORCE} RETURNING true",
            tenant_id,
            error,
        )
        return bool(changed)
    changed = await db.fetchval(
        "UPDATE salesforce_connections SET status = 'revoked', last_error = $2, updated_at = now()"
        " WHERE tenant_id = $1 AND status <> 'revoked' RETURNING true",
        tenant_id,
        error,
    )
    return bool(changed)


# ----------------------------------------------------------------------------------------------
# Sessions for services


class Sessions:
    """The sessions of one service process's tenants, for its Salesforce clients.

    ``vault`` (None without ``VAULT_KEYS``) holds ``oauth_pkce`` tenants' tokens and shares every
    tenant's access token between replicas. ``service`` signs the sync-log rows written here;
    ``secrets`` resolve the secrets tenants' documents name; ``policy`` says which hosts may be
    sent credentials and tokens.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        vault: Vault | None,
        service: str,
        http: httpx.AsyncClient,
        secrets: SecretLookup,
        policy: SalesforcePolicy,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.vault = vault
        self.service = service
        self.http = http
        self.secrets = secrets
        self.policy = policy
        self.metrics = metrics

    def for_tenant(self, tenant_id: str, spec: SalesforceSpec) -> TenantSession:
        return TenantSession(self, tenant_id, spec)


class TenantSession:
    """One tenant's access token: :meth:`current` to start, :meth:`refreshed` after a 401.

    Both check the connection first, so a tenant waiting for an admin (to connect it, or to apply
    its configuration again after a revoke) costs one query and no call to Salesforce, and what the
    admin did is found on the next attempt.
    """

    def __init__(self, sessions: Sessions, tenant_id: str, spec: SalesforceSpec) -> None:
        self._sessions = sessions
        self._tenant_id = tenant_id
        self._spec = spec
        self._mode = spec.auth.mode
        vault = sessions.vault
        source = sign_in_source(spec) if self._mode.server_side else None
        self._shared = None if vault is None else SharedSession(vault, tenant_id, self._renew, source=source)

    def __repr__(self) -> str:
        return f"TenantSession(tenant={self._tenant_id!r})"

    async def current(self) -> SessionToken:
        await self._usable()
        if self._shared is None:
            return await self._served(await self._own())
        return await self._served(await self._shared.current())

    async def refreshed(self, stale: SessionToken) -> SessionToken:
        await self._usable()
        if self._shared is None:
            return await self._served(await self._own())
        return await self._served(await self._shared.refreshed(stale))

    async def _own(self) -> SessionToken:
        # No vault to share it through (so a server-side tenant: _usable refused the others).
        token = await self._sign_in()
        return SessionToken(token.access_token, token.instance_url)

    async def _read(self) -> SalesforceConnection:
        async with self._sessions.pool.acquire() as conn:
            return await read_connection(conn, self._tenant_id)

    async def _usable(self) -> None:
        if not self._mode.server_side:
            if self._shared is None:
                raise vault_not_configured(self._tenant_id)
            connection = await self._read()
            if connection.status in AWAITING_CONNECT:
                raise self._unavailable(connection)
            return
        async with self._sessions.pool.acquire() as conn:
            if await revoked_in_force(conn, self._tenant_id):
                raise self._revoked()

    async def _served(self, token: SessionToken) -> SessionToken:
        # A token response (or a stored token) naming an instance the policy does not allow is never used.
        if (rule := self._sessions.policy.url_rule(token.instance_url)) is not None:
            failure = SignInError("policy_violation", f"instance URL {token.instance_url}: {rule}")
            await self._failed(failure)
            raise self._error(failure)
        self._flag(needs_reconnect=False, error=False)
        return token

    def _flag(self, *, needs_reconnect: bool, error: bool) -> None:
        metrics = self._sessions.metrics
        if metrics is not None:
            metrics.connection_needs_reconnect.labels(tenant=self._tenant_id).set(int(needs_reconnect))
            metrics.connection_error.labels(tenant=self._tenant_id).set(int(error))

    def _revoked(self) -> ConnectionUnavailableError:
        return ConnectionUnavailableError(
            self._tenant_id,
            str(ConnectionStatus.REVOKED),
            f"its Salesforce connection was revoked through the admin API; services sign in for it (auth mode"
            f" {self._mode}) again once a new version of its configuration is applied",
        )

    def _error(self, failure: SignInError) -> ConnectionUnavailableError:
        # "auth mode password: ..." would read as a credential to the log redactor: the mode goes first.
        what = "sign-in" if self._mode.server_side else "session refresh"
        return ConnectionUnavailableError(
            self._tenant_id,
            str(ConnectionStatus.ERROR),
            f"its Salesforce {what} ({self._mode}) failed with {failure}; Duplex tries again on its next attempt",
            code=failure.code,
        )

    def _unavailable(self, connection: SalesforceConnection) -> ConnectionUnavailableError:
        tenant = self._tenant_id
        again = f"an admin connects it with POST {authorize_path(tenant)}"
        status = connection.status
        if status is ConnectionStatus.NEEDS_RECONNECT:
            self._flag(needs_reconnect=True, error=False)
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

    async def _renew(self, refresh_token: str | None) -> Token:
        # With a vault this runs under SharedSession's lock, which a connect or revoke also takes:
        # the status read here and the tokens agree.
        if self._mode.server_side:
            return await self._sign_in()
        return await self._refresh(refresh_token)

    async def _sign_in(self) -> Token:
        sessions = self._sessions
        async with sessions.pool.acquire() as conn:
            if await revoked_in_force(conn, self._tenant_id):
                raise self._revoked()
        try:
            token = await sign_in(self._spec, sessions.secrets, sessions.http, sessions.policy)
        except SignInError as exc:
            await self._failed(exc)
            raise self._error(exc) from None
        ids = token.ids
        async with sessions.pool.acquire() as conn, conn.transaction():
            previous = await record_signed_in(
                conn,
                self._tenant_id,
                org_id=ids[0] if ids else None,
                user_id=ids[1] if ids else None,
                username=self._spec.auth.username,
                instance_url=token.instance_url,
                scopes=token.scopes,
                by=sessions.service,
            )
            if previous is ConnectionStatus.ERROR:
                await sync_log.record(
                    conn,
                    tenant_id=self._tenant_id,
                    service=sessions.service,
                    event="connection.restored",
                    message=f"signed in to Salesforce again (auth mode {self._mode})",
                    detail={"mode": str(self._mode)},
                )
        if previous is None:
            raise self._revoked()
        return token

    async def _refresh(self, refresh_token: str | None) -> Token:
        connection = await self._read()
        if connection.status in AWAITING_CONNECT or refresh_token is None:
            raise self._unavailable(connection)
        sessions = self._sessions
        try:
            sessions.policy.check_url(token_url(self._spec))
            oauth = SalesforceOAuth(connected_app(self._spec, sessions.secrets), sessions.http)
            token = await oauth.refresh(refresh_token)
        except ReconnectNeeded as exc:
            await self._lost(exc)
            raise self._unavailable(await self._read()) from exc
        except (OAuthError, PolicyViolationError, LookupError) as exc:
            failure = _refresh_failure(exc)
            await self._failed(failure)
            raise self._error(failure) from None
        async with sessions.pool.acquire() as conn:
            await record_refreshed(conn, self._tenant_id)
        return token

    async def _failed(self, failure: SignInError) -> None:
        """Status ``error``, and one sync-log row when that is news (never one per attempt)."""
        sessions, tenant = self._sessions, self._tenant_id
        what = "sign-in" if self._mode.server_side else "session refresh"
        self._flag(needs_reconnect=False, error=True)
        async with sessions.pool.acquire() as conn, conn.transaction():
            if self._mode.server_side:
                news = await record_sign_in_failure(conn, tenant, str(failure))
            else:
                news = await record_failure(conn, tenant, ConnectionStatus.ERROR, str(failure))
            if news:
                await sync_log.record(
                    conn,
                    tenant_id=tenant,
                    service=sessions.service,
                    event="connection.error",
                    code=failure.code,
                    message=f"the Salesforce {what} failed ({failure}); nothing is synced with the org until it"
                    " succeeds, and Duplex tries again after its usual back-off",
                    detail={"mode": str(self._mode), "error": failure.code, "description": failure.description},
                )
        if news:
            log.warning("tenant's Salesforce %s failed", what, extra={"tenant_id": tenant, "err": str(failure)})

    async def _lost(self, exc: OAuthError) -> None:
        tenant = self._tenant_id
        async with self._sessions.pool.acquire() as conn, conn.transaction():
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


def _refresh_failure(exc: Exception) -> SignInError:
    if isinstance(exc, OAuthError):
        return SignInError(exc.error, exc.description)
    if isinstance(exc, PolicyViolationError):
        return SignInError("policy_violation", str(exc))
    return SignInError("secret_unavailable", str(exc))

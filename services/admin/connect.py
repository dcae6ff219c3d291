"""The connect flow: a tenant's Salesforce org connected through a user's browser (OAuth 2.0
web-server flow with PKCE S256), revoked, and forgotten with the tenant.

1. :meth:`ConnectFlow.authorize`: an admin asks for an authorize URL on the tenant's login host. Its
   ``state`` (256 random bits) goes into the URL; the server keeps only the state's SHA-256, bound
   to the tenant, the admin and the PKCE verifier (sealed under the tenant's vault data key, never
   in the URL), for ten minutes.
2. The browser logs in at Salesforce, which sends it back to the callback with ``code`` and ``state``.
3. :meth:`ConnectFlow.complete`: the callback carries no bearer token (it is a browser coming back
   from Salesforce), so the state alone authenticates it. The pending authorization is deleted
   before anything else (single use), then checked (expiry; the digest compared in constant time);
   the code is exchanged with the verifier and the identity read, and only when all of that worked
   are the tokens stored in the vault and the connection recorded, in one transaction, in the name
   of the admin who started it. A callback that fails changes nothing else.

A reconnect is the same flow again: the new tokens replace the old ones, which are then revoked.
Tokens are replaced and forgotten under :class:`services.common.vault.SharedSession`'s lock, so no
service refreshes with a refresh token being swapped out.

Tenants of the server-side modes (``password``, ``client_credentials``, ``jwt_bearer``) have no
browser step: services sign them in (:mod:`services.common.connections`), and authorizing one is
refused. Revoking one revokes its current access token at Salesforce, forgets it and marks it
``revoked``: services do not sign in for it again until a new version of its configuration is
applied (a changed key or user, or a restored version, once the reason for the revoke is dealt with).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.admin.audit import write_audit
from services.common.connections import (
    SalesforceConnection,
    SecretLookup,
    connected_app,
    login_url,
    read_connection,
    record_connected,
    record_revoked,
    token_url,
)
from services.common.db import Pool
from services.common.salesforce_oauth import DEFAULT_SCOPES, ConnectedApp, OAuthError, SalesforceOAuth, Token
from services.common.tenant_config import AuthMode, SalesforceSpec, fetch_config
from services.common.tenant_config.policy import PolicyViolationError, SalesforcePolicy
from services.common.vault import Purpose, Sealed, Vault, VaultError, seal, store_grant, take_grant, unseal

log = logging.getLogger(__name__)

CALLBACK_PATH = "/api/v1/oauth/callback"
STATE_LIFETIME = timedelta(minutes=10)
# Salesforce issues a refresh token only for these; services cannot work without one.
_REFRESH_SCOPES = frozenset({"refresh_token", "offline_access"})
# Salesforce's answers to revoking a token it no longer knows: the token is dead either way.
_ALREADY_INVALID = frozenset({"invalid_token", "unsupported_token_type"})

Clock = Callable[[], datetime]


class ConnectError(Exception):
    """A connect, callback or revoke that cannot go ahead, as the API should answer it."""

    # What kind of failure (the API's problem type names it).
    INVALID_STATE = "invalid-state"
    AUTHORIZATION_FAILED = "authorization-failed"
    CANNOT_CONNECT = "cannot-connect"
    UNAVAILABLE = "unavailable"

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _invalid_state(why: str) -> ConnectError:
    return ConnectError(400, ConnectError.INVALID_STATE, f"{why}; start the connection again from the admin API")


def _bad_gateway(what: str, exc: Exception) -> ConnectError:
    reason = str(exc) or type(exc).__name__
    return ConnectError(502, ConnectError.UNAVAILABLE, f"{what} ({reason}); try again")


def _unreachable(exc: Exception) -> ConnectError:
    return _bad_gateway("Salesforce could not be reached", exc)


def state_digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True)
class Authorization:
    url: str
    expires_at: datetime
    redirect_uri: str


class ConnectFlow:
    """Connects, revokes and forgets tenants' Salesforce grants; needs the vault (``VAULT_KEYS``)."""

    def __init__(
        self,
        pool: Pool,
        vault: Vault,
        *,
        http: httpx.AsyncClient,
        secrets: SecretLookup,
        redirect_uri: str,
        policy: SalesforcePolicy | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._http = http
        self._secrets = secrets
        self.redirect_uri = redirect_uri
        # The deployment's policy, checked again before a host is sent anything: a document stored
        # before the policy tightened must not slip through. None: only the documents were checked.
        self._policy = policy
        self._clock = clock

    def _check(self, field: str, url: str) -> None:
        if self._policy is not None:
            try:
                self._policy.check_url(url)
            except PolicyViolationError as exc:
                raise ConnectError(409, ConnectError.CANNOT_CONNECT, f"{field}: {exc}") from None

    def _app(self, spec: SalesforceSpec) -> ConnectedApp:
        self._check("spec.salesforce.loginUrl", token_url(spec))
        try:
            return connected_app(spec, self._secrets, redirect_uri=self.redirect_uri)
        except PolicyViolationError as exc:
            raise ConnectError(409, ConnectError.CANNOT_CONNECT, f"the connected app's client secret: {exc}") from None
        except LookupError as exc:
            # The variable's name is configuration, not a secret.
            raise ConnectError(503, ConnectError.UNAVAILABLE, f"the connected app's client secret: {exc}") from None

    async def authorize(self, tenant_id: str, spec: SalesforceSpec, actor: str) -> Authorization:
        """A new authorize URL for ``tenant_id``, started by ``actor``."""
        auth = spec.auth
        if auth.mode.server_side:
            raise ConnectError(
                409,
                ConnectError.CANNOT_CONNECT,
                f"tenant {tenant_id} authenticates with auth mode {auth.mode}; services sign it in server-side with"
                " its configured credentials, so there is no browser step (GET its connection for the status; set"
                " spec.salesforce.auth.mode to oauth_pkce to connect it through a browser instead)",
            )
        scopes = auth.scopes or DEFAULT_SCOPES
        if not _REFRESH_SCOPES & set(scopes):
            raise ConnectError(
                409,
                ConnectError.CANNOT_CONNECT,
                f"tenant {tenant_id}'s spec.salesforce.auth.scopes lack refresh_token: without it Salesforce issues"
                " no refresh token, and services could not keep a session",
            )
        app = self._app(spec)
        request = SalesforceOAuth(app, self._http).authorize(scopes=scopes)
        now = self._clock()
        expires_at = now + STATE_LIFETIME
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM oauth_authorizations WHERE expires_at <= $1", now)
            data_key = await self._vault.data_key(conn, tenant_id)
            sealed = seal(data_key, tenant_id, Purpose.PKCE_VERIFIER, request.code_verifier)
            await conn.execute(
                "INSERT INTO oauth_authorizations (state_sha256, tenant_id, principal, verifier_nonce, verifier,"
                " client_id, login_url, redirect_uri, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                state_digest(request.state),
                tenant_id,
                actor,
                sealed.nonce,
                sealed.ciphertext,
                app.client_id,
                app.login_url,
                self.redirect_uri,
                expires_at,
            )
        return Authorization(request.url, expires_at, self.redirect_uri)

    async def complete(self, params: Mapping[str, str], request_id: str | None = None) -> SalesforceConnection:
        """The callback: check the state, exchange the code, store the grant. Raises ConnectError."""
        pending = await self._take_pending(params.get("state", ""))
        tenant_id = str(pending["tenant_id"])
        if params.get("error"):
            description = params.get("error_description")
            reason = f"{params['error']}: {description}" if description else params["error"]
            raise ConnectError(
                400, ConnectError.AUTHORIZATION_FAILED, f"Salesforce did not authorize the connection ({reason})"
            )
        code = params.get("code")
        if not code:
            raise ConnectError(
                400, ConnectError.AUTHORIZATION_FAILED, "the callback carries neither a code nor an error"
            )
        async with self._pool.acquire() as conn:
            stored = await fetch_config(conn, tenant_id)
            try:
                data_key = await self._vault.data_key(conn, tenant_id)
                verifier = unseal(
                    data_key,
                    tenant_id,
                    Purpose.PKCE_VERIFIER,
                    Sealed(bytes(pending["verifier_nonce"]), bytes(pending["verifier"])),
                )
            except VaultError:
                raise _invalid_state("the authorization's verifier cannot be read") from None
        if stored is None:
            raise ConnectError(409, ConnectError.CANNOT_CONNECT, f"tenant {tenant_id} was deleted meanwhile")
        spec = stored.config.spec.salesforce
        if spec.auth.mode is not AuthMode.OAUTH_PKCE:
            raise ConnectError(
                409,
                ConnectError.CANNOT_CONNECT,
                f"tenant {tenant_id}'s auth mode changed to {spec.auth.mode} during the authorization",
            )
        if (spec.auth.client_id, login_url(spec)) != (pending["client_id"], pending["login_url"]):
            raise ConnectError(
                409,
                ConnectError.CANNOT_CONNECT,
                f"tenant {tenant_id}'s connected app or login URL changed during the authorization; start again",
            )
        oauth = SalesforceOAuth(self._app(spec), self._http)
        token = await self._exchange(oauth, code, verifier)
        try:
            self._check("the instance URL Salesforce named", token.instance_url)
        except ConnectError:
            await self._revoke_quietly(oauth, token.refresh_token or token.access_token, tenant_id)
            raise
        try:
            identity = await oauth.identity(token)
        except (OAuthError, httpx.HTTPError) as exc:
            # Nothing is stored, so the grant would only linger at Salesforce.
            await self._revoke_quietly(oauth, token.refresh_token or token.access_token, tenant_id)
            raise _bad_gateway("Salesforce did not say who authorized the connection", exc) from None
        if token.refresh_token is None:
            await self._revoke_quietly(oauth, token.access_token, tenant_id)
            raise ConnectError(
                400,
                ConnectError.AUTHORIZATION_FAILED,
                "Salesforce issued no refresh token: allow the refresh_token scope in the connected app (and in"
                " spec.salesforce.auth.scopes), then connect again",
            )
        actor = str(pending["principal"])
        async with self._pool.acquire() as conn, conn.transaction():
            previous = await take_grant(self._vault, conn, tenant_id)
            await store_grant(self._vault, conn, tenant_id, token)
            connection = await record_connected(
                conn,
                tenant_id,
                org_id=identity.org_id,
                user_id=identity.user_id,
                username=identity.username,
                instance_url=token.instance_url,
                scopes=token.scopes,
                actor=actor,
            )
            await write_audit(
                conn,
                actor=actor,
                tenant_id=tenant_id,
                action="connection.connected",
                detail={
                    "orgId": identity.org_id,
                    "userId": identity.user_id,
                    "username": identity.username,
                    "instanceUrl": token.instance_url,
                    "scopes": list(token.scopes),
                    "reconnect": previous is not None,
                },
                request_id=request_id,
            )
        if previous is not None and previous != token.refresh_token:
            # The old grant is no longer used by anything; left valid, it would only be a liability.
            await self._revoke_quietly(oauth, previous, tenant_id)
        return connection

    async def revoke(
        self, tenant_id: str, spec: SalesforceSpec, actor: str, request_id: str | None = None
    ) -> SalesforceConnection:
        """Revoke the tenant's grant at Salesforce and forget its tokens (for a server-side tenant, its
        current access token; services then stop signing it in). If Salesforce cannot be reached,
        nothing changes (ConnectError 502): the tokens are kept so that it can be retried."""
        server_side = spec.auth.mode.server_side
        async with self._pool.acquire() as conn, conn.transaction():
            token = await take_grant(self._vault, conn, tenant_id)
            outcome = "no tokens held"
            if token is not None:
                outcome = await self._revoke(spec, token)
            changed = await record_revoked(conn, tenant_id, server_side=server_side)
            if changed or token is not None:
                await write_audit(
                    conn,
                    actor=actor,
                    tenant_id=tenant_id,
                    action="connection.revoked",
                    detail={"salesforce": outcome},
                    request_id=request_id,
                )
            return await read_connection(conn, tenant_id)

    async def forget(
        self, tenant_id: str, spec: SalesforceSpec | None, actor: str, request_id: str | None = None
    ) -> None:
        """The tenant is deleted: revoke its grant at Salesforce as far as possible (the outcome goes
        to the audit log) and drop everything the vault holds for it. ``spec`` is None when the
        stored configuration no longer validates: then Salesforce cannot be asked."""
        async with self._pool.acquire() as conn, conn.transaction():
            token = await take_grant(self._vault, conn, tenant_id)
            await conn.execute("DELETE FROM oauth_authorizations WHERE tenant_id = $1", tenant_id)
            outcome = "no tokens held"
            # Why Salesforce may still honour the grant, if it may.
            lingering: str | None = None
            if token is not None and spec is None:
                outcome = lingering = "not attempted: the stored configuration no longer validates"
            elif token is not None and spec is not None:
                try:
                    outcome = await self._revoke(spec, token)
                except ConnectError as exc:
                    outcome = lingering = f"failed: {exc}"
            changed = await record_revoked(
                conn,
                tenant_id,
                lingering and f"revoking at Salesforce {lingering}",
                server_side=spec is not None and spec.auth.mode.server_side,
            )
            if changed or token is not None:
                await write_audit(
                    conn,
                    actor=actor,
                    tenant_id=tenant_id,
                    action="connection.revoked",
                    detail={"reason": "tenant deleted", "salesforce": outcome},
                    request_id=request_id,
                )
        # After the commit: deleting the data key cascades to the secrets the transaction just deleted.
        await self._vault.delete_tenant(tenant_id)

    async def _take_pending(self, state: str) -> Any:
        """The pending authorization of ``state``, deleted (committed) before it is even checked."""
        if not state:
            raise _invalid_state("the callback carries no state")
        digest = state_digest(state)
        async with self._pool.acquire() as conn:
            # Looked up by digest, so an index lookup's timing says nothing about the state itself.
            pending = await conn.fetchrow(
                "DELETE FROM oauth_authorizations WHERE state_sha256 = $1 RETURNING *", digest
            )
        if pending is None or not hmac.compare_digest(str(pending["state_sha256"]), digest):
            raise _invalid_state("this authorization is unknown or was already used")
        if pending["expires_at"] <= self._clock():
            raise _invalid_state("this authorization expired")
        return pending

    async def _exchange(self, oauth: SalesforceOAuth, code: str, verifier: str) -> Token:
        try:
            return await oauth.exchange_code(code, verifier)
        except OAuthError as exc:
            if exc.status >= 500:
                raise _unreachable(exc) from None
            raise ConnectError(
                400,
                ConnectError.AUTHORIZATION_FAILED,
                f"Salesforce refused the authorization code ({exc}); start the connection again",
            ) from None
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None

    async def _revoke(self, spec: SalesforceSpec, token: str) -> str:
        # Revoking needs no client credentials; the host that issued the token revokes it.
        issuer = token_url(spec)
        self._check("spec.salesforce.loginUrl", issuer)
        oauth = SalesforceOAuth(ConnectedApp(client_id=spec.auth.client_id, login_url=issuer), self._http)
        try:
            await oauth.revoke(token)
        except OAuthError as exc:
            if exc.error in _ALREADY_INVALID:
                return "already invalid"
            raise _bad_gateway("Salesforce did not revoke the grant", exc) from None
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        return "revoked"

    async def _revoke_quietly(self, oauth: SalesforceOAuth, token: str, tenant_id: str) -> None:
        try:
            await oauth.revoke(token)
        except (OAuthError, httpx.HTTPError) as exc:
            log.warning("could not revoke an unused token", extra={"tenant_id": tenant_id, "err": str(exc)})

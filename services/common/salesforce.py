"""Duplex's Salesforce REST client: the one way services talk to a tenant's org.

Every call:
- asks the budget (the rate-limit-governor, through :class:`CallBudget`) before it is made;
- carries ``Sforce-Call-Options: client=<tenant's client id>`` so that CDC can tell Duplex's own
  writes from everyone else's (echo suppression);
- reports the ``Sforce-Limit-Info`` usage Salesforce returns, so calls made by other integrations
  count against what the governor grants;
- re-authenticates once on 401 INVALID_SESSION_ID and retries: ``password`` and
  ``client_credentials`` tenants log in again; ``oauth_pkce`` tenants take their session from the
  vault (:class:`~services.common.connections.VaultSessions`), where one replica refreshes it for all;
- raises :class:`~services.common.connections.ConnectionUnavailableError` for an ``oauth_pkce``
  tenant that has no usable grant (never connected, revoked, refused by Salesforce), before any budget
  is asked for;
- is counted in ``duplex_api_calls_total`` by API family (:func:`api_family`) and priority;
- raises :class:`SalesforceApiError` with Salesforce's own errorCode on failure.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from services.common.connections import (
    VAULT_NOT_CONFIGURED,
    ConnectionUnavailableError,
    TenantSession,
    VaultSessions,
)
from services.common.metrics import Metrics
from services.common.tenant_config import AuthMode, SalesforceSpec, SecretValue
from services.common.vault import SessionToken

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
OAUTH_PATH = "/services/oauth2/"
# ``/services/data/v62.0/<resource>/...``: the resource names the API family.
_DATA_RESOURCE = re.compile(r"^/services/data/v[^/]+/([^/?#]+)")

ApiFamily = Literal["rest", "composite", "bulk"]
CallPriority = Literal["live", "backfill"]


def api_family(path: str) -> ApiFamily:
    """The API family a call's ``path`` belongs to: Bulk API 2.0 (``jobs/``), Composite, or plain REST."""
    match = _DATA_RESOURCE.match(path)
    resource = match.group(1) if match else ""
    if resource == "jobs":
        return "bulk"
    if resource == "composite":
        return "composite"
    return "rest"


def call_priority(*, backfill: bool) -> CallPriority:
    """The priority label of a call, as the governor is asked for it."""
    return "backfill" if backfill else "live"


class SecretResolver(Protocol):
    def __call__(self, secret: SecretValue) -> str: ...


def env_secrets(environ: Mapping[str, str]) -> SecretResolver:
    """Resolve ``{secretRef: {env: NAME}}`` from an environment; Kubernetes Secrets arrive as env vars too."""

    def resolve(secret: SecretValue) -> str:
        ref = secret.secret_ref
        name = ref.env or f"{ref.name}_{ref.key}".upper().replace("-", "_").replace(".", "_")
        if name not in environ:
            msg = f"secret not available: environment variable {name} is not set"
            raise LookupError(msg)
        return environ[name]

    return resolve


class CallBudget(Protocol):
    """The governor seam: permission before calls, usage after them."""

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        """Return once ``calls`` calls are granted (waiting as told); raise if they never will be."""

    async def report(self, tenant_id: str, used: int, limit: int) -> None:
        """Salesforce said the org has used ``used`` of ``limit`` calls in the rolling 24 hours."""


class UnlimitedBudget:
    """No governor (tests, single-tenant tools): every call is allowed, usage is remembered."""

    def __init__(self) -> None:
        self.usage: dict[str, tuple[int, int]] = {}
        self.calls: dict[str, int] = {}

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        self.calls[tenant_id] = self.calls.get(tenant_id, 0) + calls

    async def report(self, tenant_id: str, used: int, limit: int) -> None:
        self.usage[tenant_id] = (used, limit)


@dataclass
class SalesforceApiError(Exception):
    """A failed call, with Salesforce's HTTP status and errorCode."""

    http_status: int
    error_code: str
    message: str
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.http_status} {self.error_code}: {self.message}"


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """``api-usage=18/5000`` → (18, 5000)."""
    match = _USAGE.search(header or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class Session:
    access_token: str
    instance_url: str


class SalesforceClient:
    """One tenant's connection. Safe to share between tasks; re-authentication is serialised."""

    def __init__(
        self,
        tenant_id: str,
        spec: SalesforceSpec,
        *,
        secrets: SecretResolver,
        budget: CallBudget,
        http: httpx.AsyncClient,
        session: Session | None = None,
        metrics: Metrics | None = None,
        sessions: VaultSessions | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.spec = spec
        self._secrets = secrets
        self._budget = budget
        self._http = http
        self._session = session
        self._metrics = metrics
        self._sessions = sessions
        self._vault_session: TenantSession | None = None
        self._auth_lock = asyncio.Lock()

    @property
    def api_base(self) -> str:
        return f"/services/data/v{self.spec.api_version}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        backfill: bool = False,
    ) -> httpx.Response:
        """One API call (``path`` relative to the instance, e.g. ``/services/data/v62.0/limits``)."""
        # OAuth endpoints (userinfo) are not API requests: Salesforce neither counts them nor
        # reports usage on them, so they are not asked of the budget either.
        counted = not path.startswith(OAUTH_PATH)
        # The session first: a tenant that cannot have one spends no budget on a call never made.
        session = await self._current_session()
        if counted:
            await self._budget.acquire(self.tenant_id, 1, backfill=backfill)
            self._count(path, backfill=backfill)
        response = await self._send(session, method, path, json=json, params=params, content=content, headers=headers)
        if response.status_code == 401:
            session = await self._authenticate(stale=session)
            if counted:
                await self._budget.acquire(self.tenant_id, 1, backfill=backfill)
                self._count(path, backfill=backfill)
            response = await self._send(
                session, method, path, json=json, params=params, content=content, headers=headers
            )
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            await self._budget.report(self.tenant_id, *usage)
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    async def session(self) -> Session:
        """The current session (logging in first if there is none), for APIs beside REST (Pub/Sub)."""
        return await self._current_session()

    async def refresh_session(self, stale: Session) -> Session:
        """A new session after ``stale`` was refused (another task may already have refreshed it)."""
        return await self._authenticate(stale=stale)

    def _count(self, path: str, *, backfill: bool) -> None:
        if self._metrics is not None:
            self._metrics.api_calls.labels(
                tenant=self.tenant_id, api=api_family(path), priority=call_priority(backfill=backfill)
            ).inc()

    async def _send(self, session: Session, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {session.access_token}",
            "Sforce-Call-Options": f"client={self.spec.call_options_client}",
            **(kwargs.pop("headers") or {}),
        }
        return await self._http.request(method, session.instance_url + path, headers=headers, **kwargs)

    async def _current_session(self) -> Session:
        if self._session is None:
            return await self._authenticate(stale=None)
        return self._session

    async def _authenticate(self, *, stale: Session | None) -> Session:
        async with self._auth_lock:
            if self._session is not None and self._session is not stale:
                return self._session  # another task already refreshed it
            try:
                self._session = await self._token(stale)
            except ConnectionUnavailableError:
                # The next call starts from the vault again, where a reconnect puts a new session.
                self._session = None
                raise
            return self._session

    async def _from_vault(self, stale: Session | None) -> Session:
        if self._sessions is None:
            msg = "auth mode oauth_pkce keeps the tenant's tokens in the vault, and this service has no VAULT_KEYS"
            raise ConnectionUnavailableError(self.tenant_id, VAULT_NOT_CONFIGURED, msg)
        if self._vault_session is None:
            self._vault_session = self._sessions.for_tenant(self.tenant_id, self.spec)
        if stale is None:
            token = await self._vault_session.current()
        else:
            token = await self._vault_session.refreshed(SessionToken(stale.access_token, stale.instance_url))
        return Session(token.access_token, token.instance_url)

    async def _token(self, stale: Session | None) -> Session:
        auth = self.spec.auth
        if auth.mode is AuthMode.OAUTH_PKCE:
            return await self._from_vault(stale)
        form: dict[str, str] = {"client_id": auth.client_id}
        if auth.client_secret is not None:
            form["client_secret"] = self._secrets(auth.client_secret)
        if auth.mode is AuthMode.CLIENT_CREDENTIALS:
            form["grant_type"] = "client_credentials"
        elif auth.mode is AuthMode.PASSWORD:
            # Guaranteed by the configuration's own checks for password mode.
            assert auth.username is not None
            assert auth.password is not None
            password = self._secrets(auth.password)
            if auth.security_token is not None:
                password += self._secrets(auth.security_token)
            form |= {"grant_type": "password", "username": auth.username, "password": password}
        login = str(self.spec.login_url or self.spec.instance_url).rstrip("/")
        response = await self._http.post(f"{login}/services/oauth2/token", data=form)
        if response.status_code != 200:
            body = _json(response)
            raise SalesforceApiError(
                response.status_code,
                str(body.get("error", "invalid_grant")) if isinstance(body, dict) else "invalid_grant",
                str(body.get("error_description", "")) if isinstance(body, dict) else response.text[:200],
            )
        token = response.json()
        return Session(token["access_token"], token["instance_url"].rstrip("/"))


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _api_error(response: httpx.Response) -> SalesforceApiError:
    body = _json(response)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        return SalesforceApiError(
            response.status_code,
            str(first.get("errorCode", "UNKNOWN_EXCEPTION")),
            str(first.get("message", "")),
            list(first.get("fields") or []),
        )
    return SalesforceApiError(response.status_code, "UNKNOWN_EXCEPTION", response.text[:500])

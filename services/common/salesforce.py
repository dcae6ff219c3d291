"""Duplex's Salesforce REST client: the one way services talk to a tenant's org.

Every call:
- asks the budget (the rate-limit-governor, through :class:`CallBudget`) before it is made;
- carries ``Sforce-Call-Options: client=<tenant's client id>`` so that CDC can tell Duplex's own
  writes from everyone else's (echo suppression);
- reports the ``Sforce-Limit-Info`` usage Salesforce returns, so calls made by other integrations
  count against what the governor grants;
- re-authenticates once on 401 INVALID_SESSION_ID and retries: the session comes from the
  service's :class:`~services.common.connections.Sessions` (``oauth_pkce`` tenants' from the vault,
  where one replica refreshes it for all; the server-side modes sign in again, through the vault too
  when there is one); a client without them (tools, tests) signs in by itself;
- raises :class:`~services.common.connections.ConnectionUnavailableError` for a tenant that cannot
  have a session (never connected, revoked, a sign-in refused by Salesforce or by the deployment's
  policy), before any budget is asked for;
- is counted in ``duplex_api_calls_total`` by API family (:func:`api_family`) and priority;
- raises :class:`SalesforceApiError` with Salesforce's own errorCode on failure;
- is traced: one client span per HTTP request (:func:`path_template` names it, so no record id or
  query text reaches a trace), with its status and Salesforce's errorCode.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
from opentelemetry import trace

from services.common.connections import (
    ConnectionStatus,
    ConnectionUnavailableError,
    Sessions,
    SignInError,
    TenantSession,
    sign_in,
    vault_not_configured,
)
from services.common.metrics import Metrics
from services.common.telemetry import client_span
from services.common.tenant_config import SalesforceSpec, SecretValue
from services.common.tenant_config.policy import SalesforcePolicy
from services.common.vault import SessionToken

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
OAUTH_PATH = "/services/oauth2/"
# ``/services/data/v62.0/<resource>/...``: the resource names the API family.
_DATA_RESOURCE = re.compile(r"^/services/data/v[^/]+/([^/?#]+)")

ApiFamily = Literal["rest", "composite", "bulk"]
CallPriority = Literal["live", "backfill"]

_tracer = trace.get_tracer(__name__)
_VERSION = re.compile(r"^v\d+(\.\d+)?$")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Path segments that name an API resource, never a record: everything else in a path (record and
# job ids, external id values, query locators) is replaced by ``{id}`` in a span's name.
_RESOURCES = frozenset(
    {
        "services", "data", "oauth2", "token", "revoke", "userinfo", "introspect", "sobjects", "describe",
        "updated", "deleted", "composite", "batch", "tree", "collections", "graph", "query", "queryAll",
        "search", "tooling", "jobs", "ingest", "batches", "results", "successfulResults", "failedResults",
        "unprocessedrecords", "limits", "layouts", "recordTypes",
    }
)  # fmt: skip


def path_template(path: str) -> str:
    """``path`` with its query dropped and every segment but API words replaced by ``{id}``:
    ``/services/data/v62.0/sobjects/Account/001…`` → ``/services/data/v62.0/sobjects/Account/{id}``.

    An object's API name is kept right after ``sobjects``, and a field's before an external id
    value (``sobjects/Account/Ext__c/{id}``).
    """
    parts = path.split("?", 1)[0].split("#", 1)[0].strip("/").split("/")
    kept: list[str] = []
    for index, part in enumerate(parts):
        after_sobjects = kept[-1:] == ["sobjects"] or (kept[-2:-1] == ["sobjects"] and index + 1 < len(parts))
        if part in _RESOURCES or _VERSION.match(part) or (after_sobjects and _API_NAME.match(part)):
            kept.append(part)
        else:
            kept.append("{id}")
    return "/" + "/".join(kept)


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


def secret_env_name(secret: SecretValue, policy: SalesforcePolicy) -> str:
    """The variable a secret is read from: ``{env: NAME}`` names it; a Kubernetes Secret's key
    ``{name: N, key: K}`` arrives as ``<prefix>N_K``, upper-cased with ``-`` and ``.`` as ``_`` (the
    Helm chart maps it so), which keeps it under the policy's prefix too."""
    ref = secret.secret_ref
    if ref.env is not None:
        return ref.env
    return f"{policy.secret_env_prefix}{ref.name}_{ref.key}".upper().replace("-", "_").replace(".", "_")


def env_secrets(environ: Mapping[str, str], *, policy: SalesforcePolicy | None = None) -> SecretResolver:
    """Resolve tenants' secrets from an environment (Kubernetes Secrets arrive as env vars too).

    A variable outside the policy's prefix is never read (PolicyViolationError): a tenant document
    must not make a service hand out, say, its own ``POSTGRES_DSN``. A missing one is a LookupError.
    """
    rules = policy or SalesforcePolicy()

    def resolve(secret: SecretValue) -> str:
        name = secret_env_name(secret, rules)
        rules.check_env(name)
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
    """One tenant's connection. Safe to share between tasks; re-authentication is serialised.

    ``sessions`` (a service's) give the tenant its sessions; without them the client signs a
    server-side tenant in by itself, within ``policy``, and an ``oauth_pkce`` tenant cannot be served.
    """

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
        sessions: Sessions | None = None,
        policy: SalesforcePolicy | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.spec = spec
        self._secrets = secrets
        self._budget = budget
        self._http = http
        self._session = session
        self._metrics = metrics
        self._sessions = sessions
        self._policy = policy or SalesforcePolicy()
        self._tenant_session: TenantSession | None = None
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
        template = path_template(path)
        attributes = {
            "http.request.method": method,
            "url.template": template,
            "salesforce.api": api_family(path),
            "duplex.tenant_id": self.tenant_id,
        }
        with client_span(_tracer, f"{method} {template}", attributes) as span:
            response = await self._http.request(method, session.instance_url + path, headers=headers, **kwargs)
            if span.is_recording():
                traced_status(span, response)
            return response

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
                # The next call starts over (from the vault, where a reconnect puts a new session).
                self._session = None
                raise
            return self._session

    async def _from_sessions(self, sessions: Sessions, stale: Session | None) -> Session:
        if self._tenant_session is None:
            self._tenant_session = sessions.for_tenant(self.tenant_id, self.spec)
        if stale is None:
            token = await self._tenant_session.current()
        else:
            token = await self._tenant_session.refreshed(SessionToken(stale.access_token, stale.instance_url))
        return Session(token.access_token, token.instance_url)

    async def _token(self, stale: Session | None) -> Session:
        if self._sessions is not None:
            return await self._from_sessions(self._sessions, stale)
        if not self.spec.auth.mode.server_side:
            raise vault_not_configured(self.tenant_id)
        try:
            token = await sign_in(self.spec, self._secrets, self._http, self._policy)
        except SignInError as exc:
            message = f"its Salesforce sign-in ({self.spec.auth.mode}) failed with {exc}"
            raise ConnectionUnavailableError(
                self.tenant_id, str(ConnectionStatus.ERROR), message, code=exc.code
            ) from None
        return Session(token.access_token, token.instance_url)


def traced_status(span: trace.Span, response: httpx.Response) -> None:
    """A Salesforce response's status (and errorCode, on failure) on its span."""
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code >= 400:
        span.set_attribute("salesforce.error_code", _api_error(response).error_code)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(response.status_code)))


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

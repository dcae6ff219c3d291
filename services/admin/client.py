"""A small typed client of the admin API, for the ``duplex`` command line.

Where the server is and which token to send come from :class:`ClientSettings` (``DUPLEX_SERVER``,
``DUPLEX_TOKEN``, ``DUPLEX_TOKEN_FILE``); flags override them. Every failure surfaces as one of three
exceptions, each with a message fit to print as it is: :class:`ApiProblemError` (the server answered
with a problem document), :class:`ServerUnreachableError` (no usable answer), :class:`CredentialError`
(no token, or a token file that is unsafe or unreadable). A token is never part of a message.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.admin.api.backfills import Backfill, BackfillList, BackfillRequest
from services.admin.api.dead_letters import Acted, DeadLetterList, DiscardRequest, ReplayRequest
from services.admin.api.health import TenantHealth
from services.admin.api.jobs import JobList, JobRequest, JobView
from services.admin.api.models import (
    Applied,
    ConnectionAuthorization,
    CreatedToken,
    SalesforceConnectionView,
    TenantList,
    TenantVersion,
    TokenList,
    TokenRequest,
    Validated,
    VersionDiff,
    VersionList,
)
from services.admin.api.pauses import PauseRequest, PauseState, ResumeRequest
from services.admin.api.plan import Plan
from services.admin.api.retries import Retries, RetryRequest
from services.admin.api.schema import (
    AppSchemaItem,
    AppSchemaList,
    AppSchemaRequest,
    Catalog,
    DescribedItem,
    Drift,
    FilterPreview,
    FilterRequest,
    PairSuggestions,
    Refreshed,
    RefreshRequest,
)
from services.admin.api.sync_log import RecordTimeline, SyncLogPage

M = TypeVar("M", bound=BaseModel)

DEFAULT_SERVER = "http://127.0.0.1:8080"
API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
# Hosts a token may travel to over plain http without a warning: it never leaves the machine.
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ClientSettings(BaseSettings):
    """How the command line reaches the admin API. Flags (``--server``, ``--token-file``) win."""

    model_config = SettingsConfigDict(env_prefix="DUPLEX_", frozen=True, extra="ignore")

    server: str = Field(default=DEFAULT_SERVER, description="The admin API's base URL (DUPLEX_SERVER).")
    token: SecretStr | None = Field(default=None, description="An API token or OIDC access token (DUPLEX_TOKEN).")
    token_file: Path | None = Field(
        default=None, description="A file holding the token, readable by its owner only (DUPLEX_TOKEN_FILE)."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Per request (DUPLEX_TIMEOUT_SECONDS).")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            msg = f"must be an http(s) URL such as {DEFAULT_SERVER} or https://duplex.example.com (got {value!r})"
            raise ValueError(msg)
        return value.strip().rstrip("/")


def load_client_settings(*, server: str | None = None, token_file: Path | None = None) -> ClientSettings:
    """The settings from the environment, with the flags given (``None``: not given) on top.

    A ``--token-file`` flag also wins over ``DUPLEX_TOKEN``: what is typed beats what is inherited.
    """
    given: dict[str, Any] = {}
    if server is not None:
        given["server"] = server
    if token_file is not None:
        given["token_file"] = token_file
        given["token"] = None
    return ClientSettings(**given)


# ---------------------------------------------------------------------------------------------
# Errors


class ClientError(Exception):
    """Anything that stops a call; ``str()`` is one line fit for the user."""


class CredentialError(ClientError):
    """No token is configured, or the token file is unsafe or unreadable."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        # No token at all (rather than a bad file): the caller has no access yet.
        self.missing = missing


class ServerUnreachableError(ClientError):
    """The server cannot be reached, or what answered is not the admin API."""


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str


class ApiProblemError(ClientError):
    """The server answered with an error status (a problem document, RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        errors: tuple[FieldProblem, ...] = (),
        request_id: str | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors
        self.request_id = request_id


# ---------------------------------------------------------------------------------------------
# The token


@dataclass(frozen=True)
class Credential:
    secret: SecretStr
    # Where it came from, for messages: never the token itself.
    source: str


def read_token_file(path: Path) -> SecretStr:
    """The token in ``path``, which only its owner may read or write (as ssh demands of a key).

    The checks run on the opened file, so the file cannot be swapped between check and read.
    """
    try:
        # Non-blocking: a FIFO put in the file's place must not hang the command.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CredentialError(f"token file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialError(f"token file {path}: not a regular file")
        if info.st_uid != os.getuid():
            raise CredentialError(f"token file {path}: owned by another user (uid {info.st_uid}); refusing to use it")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise CredentialError(
                f"token file {path}: readable or writable by others (mode {mode:04o}); run: chmod 600 {path}"
            )
        raw = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"token file {path}: not UTF-8 text") from None
    if not token:
        raise CredentialError(f"token file {path}: empty")
    if any(c.isspace() for c in token):
        raise CredentialError(f"token file {path}: must hold the token alone, on one line")
    return SecretStr(token)


def credential(settings: ClientSettings) -> Credential:
    """The token to send: ``--token-file``, else ``DUPLEX_TOKEN``, else ``DUPLEX_TOKEN_FILE``."""
    if settings.token is not None and settings.token.get_secret_value().strip():
        return Credential(SecretStr(settings.token.get_secret_value().strip()), "DUPLEX_TOKEN")
    if settings.token_file is not None:
        return Credential(read_token_file(settings.token_file), f"token file {settings.token_file}")
    raise CredentialError(
        "no API token: set DUPLEX_TOKEN, or DUPLEX_TOKEN_FILE / --token-file to a file only you can read",
        missing=True,
    )


def sends_token_in_clear(server: str) -> bool:
    """True when a bearer token would cross a network unencrypted."""
    parts = urlsplit(server)
    return parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK_HOSTS


# ---------------------------------------------------------------------------------------------
# The preflight check (POST .../connection:check), read leniently: another module owns its shape.


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PreflightCheck(_Lenient):
    name: str
    ok: bool
    detail: str
    fix: str | None = None


class PreflightReport(_Lenient):
    tenant: str
    ok: bool
    checks: list[PreflightCheck]


# ---------------------------------------------------------------------------------------------
# The client


def _segment(value: str) -> str:
    # A tenant name is a DNS label, but whatever the user typed must stay one path segment.
    return quote(value, safe="")


def _problem(server: str, response: httpx.Response) -> ApiProblemError:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or response.headers.get("content-type", "").split(";")[0] != PROBLEM_JSON:
        # Not the API's own answer: a proxy or a load balancer in front of it, or another server.
        title = response.reason_phrase or f"HTTP {response.status_code}"
        return ApiProblemError(
            response.status_code,
            title,
            f"{title} (HTTP {response.status_code} without a problem document: is {server} the Duplex admin API?)",
        )
    errors = tuple(
        FieldProblem(str(e.get("field", "")), str(e.get("message", "")))
        for e in body.get("errors") or ()
        if isinstance(e, dict)
    )
    detail = body.get("detail")
    if response.status_code == 404 and not detail:
        # The API names what it did not find; a bare 404 is a path it does not have.
        detail = f"{_method_path(response)}: no such route at {server} (is the server older than this CLI?)"
    request_id = body.get("requestId")
    return ApiProblemError(
        response.status_code,
        str(body.get("title") or response.reason_phrase),
        str(detail) if detail else None,
        type=str(body.get("type") or "about:blank"),
        errors=errors,
        request_id=str(request_id) if request_id else None,
    )


class AdminClient:
    """The admin API at ``server``, called with ``token`` (use as a context manager)."""

    def __init__(
        self,
        server: str,
        token: Credential,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.server = server
        self.credential_source = token.source
        headers = {
            "user-agent": "duplex-cli",
            "accept": f"application/json, {PROBLEM_JSON}",
            "authorization": f"Bearer {token.secret.get_secret_value()}",
        }
        self._http = httpx.Client(base_url=server, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, API + path, json=json_body, params=params)
        except httpx.TimeoutException:
            raise ServerUnreachableError(f"the admin API at {self.server} did not answer in time") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ServerUnreachableError(f"cannot reach the admin API at {self.server}: {reason}") from None
        if response.is_redirect:
            where = response.headers.get("location", "elsewhere")
            raise ServerUnreachableError(
                f"the server at {self.server} redirects to {where}: set --server (DUPLEX_SERVER) to the API's own URL"
            )
        if response.status_code >= 400:
            raise _problem(self.server, response)
        return response

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            kind = response.headers.get("content-type", "no content type")
            raise ServerUnreachableError(
                f"the server at {self.server} answered {_method_path(response)} with something that is not the"
                f" Duplex admin API's answer (HTTP {response.status_code}, {kind})"
            ) from None

    def _get(self, model: type[M], path: str, params: Mapping[str, Any] | None = None) -> M:
        return self._parse(model, self._call("GET", path, params=params))

    # --- tenants ------------------------------------------------------------------------------

    def tenants(self) -> TenantList:
        return self._get(TenantList, "/tenants")

    def validate(self, document: Mapping[str, Any]) -> Validated:
        return self._parse(Validated, self._call("POST", "/tenants:validate", json_body=document))

    def apply(self, tenant: str, document: Mapping[str, Any]) -> Applied:
        return self._parse(Applied, self._call("PUT", f"/tenants/{_segment(tenant)}", json_body=document))

    def show(self, tenant: str, version: int | None = None) -> TenantVersion:
        path = f"/tenants/{_segment(tenant)}"
        return self._get(TenantVersion, path if version is None else f"{path}/versions/{version}")

    def versions(self, tenant: str) -> VersionList:
        return self._get(VersionList, f"/tenants/{_segment(tenant)}/versions")

    def diff(self, tenant: str, before: int, after: int | None = None) -> VersionDiff:
        params = {"from": before} if after is None else {"from": before, "to": after}
        return self._get(VersionDiff, f"/tenants/{_segment(tenant)}/diff", params)

    def restore(self, tenant: str, version: int) -> Applied:
        return self._parse(Applied, self._call("POST", f"/tenants/{_segment(tenant)}/versions/{version}:restore"))

    def delete_tenant(self, tenant: str) -> None:
        self._call("DELETE", f"/tenants/{_segment(tenant)}")

    # --- tokens -------------------------------------------------------------------------------

    def create_token(self, request: TokenRequest) -> CreatedToken:
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._parse(CreatedToken, self._call("POST", "/tokens", json_body=body))

    def tokens(self) -> TokenList:
        return self._get(TokenList, "/tokens")

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/tokens/{_segment(token_id)}")

    # --- the Salesforce connection ------------------------------------------------------------

    def connection(self, tenant: str) -> SalesforceConnectionView:
        return self._get(SalesforceConnectionView, f"/tenants/{_segment(tenant)}/connection")

    def authorize(self, tenant: str) -> ConnectionAuthorization:
        response = self._call("POST", f"/tenants/{_segment(tenant)}/connection:authorize")
        return self._parse(ConnectionAuthorization, response)

    def revoke_connection(self, tenant: str) -> SalesforceConnectionView:
        response = self._call("POST", f"/tenants/{_segment(tenant)}/connection:revoke")
        return self._parse(SalesforceConnectionView, response)

    def check_connection(self, tenant: str) -> PreflightReport:
        return self._parse(PreflightReport, self._call("POST", f"/tenants/{_segment(tenant)}/connection:check"))

    def health(self, tenant: str) -> TenantHealth:
        return self._get(TenantHealth, f"/tenants/{_segment(tenant)}/health")

    def sync_log(self, tenant: str, filters: Mapping[str, Any], cursor: str | None = None) -> SyncLogPage:
        """One page of the tenant's sync log; ``filters`` are the route's query parameters."""
        params = {name: value for name, value in filters.items() if value not in (None, [], ())}
        if cursor is not None:
            params["cursor"] = cursor
        return self._get(SyncLogPage, f"/tenants/{_segment(tenant)}/sync-log", params)

    def timeline(self, tenant: str, record: str, limit: int) -> RecordTimeline:
        path = f"/tenants/{_segment(tenant)}/records/{_segment(record)}/timeline"
        return self._get(RecordTimeline, path, {"limit": limit})

    # --- run control --------------------------------------------------------------------------

    def backfill(self, tenant: str, salesforce_object: str) -> Backfill:
        body = BackfillRequest(object=salesforce_object).model_dump(by_alias=True)
        return self._parse(Backfill, self._call("POST", f"/tenants/{_segment(tenant)}/backfills", json_body=body))

    def dead_letters(
        self,
        tenant: str,
        topics: list[str],
        states: list[str],
        limit: int,
        record: str | None = None,
        since: str | None = None,
    ) -> DeadLetterList:
        params = {"topic": topics, "state": states, "limit": limit}
        params |= {name: value for name, value in {"record": record, "since": since}.items() if value is not None}
        return self._get(DeadLetterList, f"/tenants/{_segment(tenant)}/dead-letters", params)

    def replay(self, tenant: str, request: ReplayRequest) -> Acted:
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        path = f"/tenants/{_segment(tenant)}/dead-letters:replay"
        return self._parse(Acted, self._call("POST", path, json_body=body))

    def discard(self, tenant: str, ids: list[str], reason: str) -> Acted:
        body = DiscardRequest(ids=ids, reason=reason).model_dump(by_alias=True)
        path = f"/tenants/{_segment(tenant)}/dead-letters:discard"
        return self._parse(Acted, self._call("POST", path, json_body=body))

    def retry(self, tenant: str, request: RetryRequest) -> Retries:
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._parse(Retries, self._call("POST", f"/tenants/{_segment(tenant)}/retries", json_body=body))

    def pauses(self, tenant: str) -> PauseState:
        return self._get(PauseState, f"/tenants/{_segment(tenant)}/pauses")

    def pause(self, tenant: str, request: PauseRequest) -> PauseState:
        body = request.model_dump(by_alias=True, exclude_none=True)
        return self._parse(PauseState, self._call("POST", f"/tenants/{_segment(tenant)}/pause", json_body=body))

    def resume(self, tenant: str, request: ResumeRequest) -> PauseState:
        body = request.model_dump(by_alias=True, exclude_none=True)
        return self._parse(PauseState, self._call("POST", f"/tenants/{_segment(tenant)}/resume", json_body=body))

    def run_job(self, tenant: str, kind: str, pair: str) -> JobView:
        body = JobRequest.model_validate({"kind": kind, "objectPair": pair}).model_dump(by_alias=True)
        return self._parse(JobView, self._call("POST", f"/tenants/{_segment(tenant)}/jobs", json_body=body))

    def jobs(
        self,
        tenant: str,
        *,
        kind: str | None = None,
        status: str | None = None,
        pair: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> JobList:
        asked = {"kind": kind, "status": status, "pair": pair, "limit": limit, "before": before}
        params = {k: v for k, v in asked.items() if v}
        return self._get(JobList, f"/tenants/{_segment(tenant)}/jobs", params=params)

    def job(self, tenant: str, job_id: int) -> JobView:
        return self._get(JobView, f"/tenants/{_segment(tenant)}/jobs/{job_id}")

    def backfills(self, tenant: str) -> BackfillList:
        return self._get(BackfillList, f"/tenants/{_segment(tenant)}/backfills")

    # --- schemas ------------------------------------------------------------------------------

    def refresh_schema(self, tenant: str, objects: list[str]) -> Refreshed:
        body = RefreshRequest(objects=objects).model_dump(by_alias=True)
        return self._parse(Refreshed, self._call("POST", f"/tenants/{_segment(tenant)}/schema:refresh", json_body=body))

    def schema_objects(self, tenant: str, kind: str | None, search: str | None) -> Catalog:
        params = {k: v for k, v in (("kind", kind), ("q", search)) if v is not None}
        return self._get(Catalog, f"/tenants/{_segment(tenant)}/schema/objects", params)

    def schema_object(self, tenant: str, name: str, version: int | None) -> DescribedItem:
        params = {} if version is None else {"version": version}
        return self._get(DescribedItem, f"/tenants/{_segment(tenant)}/schema/objects/{_segment(name)}", params)

    def schema_drift(self, tenant: str) -> Drift:
        return self._get(Drift, f"/tenants/{_segment(tenant)}/schema/drift")

    def declare_app_object(self, tenant: str, name: str, request: AppSchemaRequest) -> AppSchemaItem:
        body = request.model_dump(mode="json", by_alias=True)
        path = f"/tenants/{_segment(tenant)}/app-schema/{_segment(name)}"
        return self._parse(AppSchemaItem, self._call("PUT", path, json_body=body))

    def suggestions(self, tenant: str, pair: str) -> PairSuggestions:
        return self._get(PairSuggestions, f"/tenants/{_segment(tenant)}/pairs/{_segment(pair)}/suggestions")

    def plan(self, tenant: str, document: Mapping[str, Any]) -> Plan:
        return self._parse(Plan, self._call("POST", f"/tenants/{_segment(tenant)}/plan", json_body=document))

    def validate_filter(self, tenant: str, pair: str, soql: str | None) -> FilterPreview:
        body = FilterRequest(soql=soql).model_dump(by_alias=True, exclude_none=True)
        path = f"/tenants/{_segment(tenant)}/pairs/{_segment(pair)}/filter:validate"
        return self._parse(FilterPreview, self._call("POST", path, json_body=body))

    def app_objects(self, tenant: str) -> AppSchemaList:
        return self._get(AppSchemaList, f"/tenants/{_segment(tenant)}/app-schema")


def _method_path(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"

"""The connection preflight check: can Duplex sync this tenant with its org, and if not, what to fix.

:func:`read_org` makes a bounded number of reads through an :class:`OrgReader` (a sign-in, which is
not an API call; one ``/limits``; one describe per mapped object; one Tooling query for the Change
Data Capture selection, when CDC is on) and keeps what each returned, or why it failed, in
:class:`OrgFacts`. :func:`preflight_checks` turns those facts and the tenant's configuration into
the checks, in order, each passing or failing with a one-line fix. Everything but ``read_org`` and
:class:`ClientReader` is pure, so every check is tested with plain dicts.

A check that cannot run because an earlier read failed is reported as failing, naming the check
to fix first: a tenant that cannot sign in gets every check, all failing, rather than a short list
that looks like less is wrong.

What Duplex needs of the org, and where it comes from:

- a pair writes to Salesforce when its direction or one of its fields' flows to the CRM: the writer
  then upserts records on the external-id field (so the object must be createable and updateable,
  and the external-id field createable) and, with ``deletePolicy: propagate``, deletes them;
- the external-id field must be an External ID and Unique: upserts match on it, and a value two
  records share makes them ambiguous;
- with ``deletePolicy: soft_delete`` a delete flowing to Salesforce sets the soft-delete field,
  a checkbox, instead;
- cdc-ingest streams an object only when its change event is selected for Change Data Capture
  (the standard ChangeEvents channel, read through the Tooling API); otherwise it polls the object
  every ``pollIntervalSeconds`` and reads the selection again at its next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import httpx

from services.common.connections import (
    AWAITING_CONNECT,
    VAULT_NOT_CONFIGURED,
    ConnectionStatus,
    ConnectionUnavailableError,
    authorize_path,
)
from services.common.salesforce import SalesforceApiError, SalesforceClient, UnlimitedBudget
from services.common.schema_refresh import SELECTED_ENTITIES_QUERY, change_event_name
from services.common.tenant_config import AuthMode, DeletePolicy, ObjectPair, TenantConfig
from services.common.tenant_config.validation import format_path
from services.common.vault import VaultError

DAILY_API_REQUESTS = "DailyApiRequests"
T = TypeVar("T")
ACCESS = "API access"
LIMITS = "API limits"
# Salesforce's answers after which no further call can work.
_FATAL_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "API_DISABLED_FOR_ORG", "INVALID_SESSION_ID"})


# ------------------------------------------------------------------------------------------------
# What was read


class FailureKind(StrEnum):
    # Only an admin's action helps: connect (or reconnect) an oauth_pkce tenant; apply a new version
    # of a revoked server-side tenant's configuration.
    AWAITS_CONNECT = "awaits_connect"
    # Salesforce refused the sign-in or the refresh (``error_code``: its OAuth error).
    SIGN_IN = "sign_in"
    # A secret the tenant's configuration names is not available to the admin API.
    SECRET = "secret"
    # The deployment's policy forbids a host or a secret's variable the tenant names.
    POLICY = "policy"
    # No session for another reason: no vault, a vault that cannot decrypt, an unusable private key.
    SESSION = "session"
    # Salesforce answered an API call with an error (``error_code``: its errorCode).
    REFUSED = "refused"
    # Salesforce could not be reached, or answered with something that is not JSON.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Failure:
    """Why a read did not work."""

    kind: FailureKind
    message: str
    error_code: str = ""
    http_status: int | None = None

    def stops_everything(self) -> bool:
        """After this no other call can work (no session, no more API requests, no network)."""
        return self.kind is not FailureKind.REFUSED or self.error_code in _FATAL_CODES

    def __str__(self) -> str:
        # An API call's error names Salesforce's errorCode; every other failure's message is a sentence.
        if self.kind is FailureKind.REFUSED and self.error_code:
            return f"{self.error_code}: {self.message}" if self.message else self.error_code
        return self.message


@dataclass(frozen=True)
class NotRead:
    """A read not attempted because ``after`` (a check's name) failed first."""

    after: str
    why: str


@dataclass(frozen=True)
class SignedIn:
    instance_url: str


@dataclass(frozen=True)
class OrgFacts:
    """What :func:`read_org` read (or why not); ``selection`` is empty when no object streams."""

    access: SignedIn | Failure
    limits: Mapping[str, Any] | Failure | NotRead
    describes: Mapping[str, Mapping[str, Any] | Failure | NotRead]
    selection: Sequence[str] | Failure | NotRead
    # API requests made (each counted against the org's daily allocation).
    calls: int = 0


class ReadError(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class OrgReader(Protocol):
    """The few reads the check makes; each raises :class:`ReadError` with why it failed."""

    @property
    def calls(self) -> int:
        """API requests made so far."""

    async def sign_in(self) -> SignedIn: ...

    async def limits(self) -> Mapping[str, Any]: ...

    async def describe(self, sobject: str) -> Mapping[str, Any]: ...

    async def cdc_selection(self) -> list[str]:
        """The ``SelectedEntity`` of every member of the standard ChangeEvents channel."""


def salesforce_objects(config: TenantConfig) -> list[str]:
    """Every mapped Salesforce object, once, in configuration order."""
    return list(dict.fromkeys(pair.salesforce.object for pair in config.spec.objects))


def reads_from_salesforce(pair: ObjectPair) -> bool:
    return pair.direction.to_app or any(pair.direction_of(f).to_app for f in pair.fields)


def writes_to_salesforce(pair: ObjectPair) -> bool:
    return pair.direction.to_crm or any(pair.direction_of(f).to_crm for f in pair.fields)


def streamed_objects(config: TenantConfig) -> list[str]:
    """The objects cdc-ingest would stream (CDC on, read from Salesforce), once each."""
    if not config.spec.sync.cdc:
        return []
    return list(dict.fromkeys(p.salesforce.object for p in config.spec.objects if reads_from_salesforce(p)))


async def _attempt(read: Awaitable[T]) -> T | Failure:
    try:
        return await read
    except ReadError as exc:
        return exc.failure


async def read_org(config: TenantConfig, reader: OrgReader) -> OrgFacts:
    """Read what the checks need, in order, stopping where nothing further can work."""
    objects = salesforce_objects(config)
    streams = bool(streamed_objects(config))
    access = await _attempt(reader.sign_in())
    if isinstance(access, Failure):
        skipped = NotRead(ACCESS, "Duplex could not sign in to the org")
        return OrgFacts(access, skipped, dict.fromkeys(objects, skipped), skipped if streams else (), reader.calls)
    limits = await _attempt(reader.limits())
    if isinstance(limits, Failure) and limits.stops_everything():
        skipped = NotRead(LIMITS, f"no further call can work ({limits})")
        return OrgFacts(access, limits, dict.fromkeys(objects, skipped), skipped if streams else (), reader.calls)
    # Independent reads of one call each: concurrently, so many objects cost about one round trip.
    described, selection = await asyncio.gather(
        asyncio.gather(*(_attempt(reader.describe(o)) for o in objects)),
        _attempt(reader.cdc_selection()) if streams else _nothing_selected(),
    )
    return OrgFacts(access, limits, dict(zip(objects, described, strict=True)), selection, reader.calls)


async def _nothing_selected() -> Sequence[str]:
    return ()


# ------------------------------------------------------------------------------------------------
# The checks


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # One line; None when the check passed.
    fix: str | None = None


def _passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def _failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


def _not_checked(name: str, skipped: NotRead) -> Check:
    return _failed(name, f"not checked: {skipped.why}", f"fix '{skipped.after}' first, then check again")


def _auth_how(config: TenantConfig) -> str:
    auth = config.spec.salesforce.auth
    if auth.mode is AuthMode.OAUTH_PKCE:
        return "with the session the connect flow keeps in the vault"
    if auth.mode is AuthMode.PASSWORD:
        return f"as {auth.username} (password grant)"
    if auth.mode is AuthMode.JWT_BEARER:
        return f"as {auth.username} (JWT bearer grant)"
    return "as the connected app's run-as user (client credentials grant)"


def access_check(config: TenantConfig, access: SignedIn | Failure) -> Check:
    if isinstance(access, SignedIn):
        return _passed(ACCESS, f"signed in to {access.instance_url} {_auth_how(config)}")
    spec = config.spec.salesforce
    if access.kind is FailureKind.UNREACHABLE:
        return _failed(
            ACCESS,
            f"Salesforce could not be reached at {spec.login_url or spec.instance_url}: {access.message}",
            "check spec.salesforce.loginUrl and instanceUrl, and that the admin API can reach them (proxy,"
            " firewall, DUPLEX_ADMIN_SALESFORCE_CA_FILE)",
        )
    return _failed(ACCESS, str(access), _access_fix(config, access))


def _access_fix(config: TenantConfig, failure: Failure) -> str:
    tenant = config.tenant_id
    server_side = config.spec.salesforce.auth.mode is not AuthMode.OAUTH_PKCE
    if failure.kind is FailureKind.AWAITS_CONNECT:
        if server_side:
            return (
                f"once the reason for the revoke is dealt with, apply a new version of its configuration"
                f" (PUT /api/v1/tenants/{tenant})"
            )
        again = "connect" if failure.error_code == ConnectionStatus.NOT_CONNECTED else "reconnect"
        return f"{again} it: POST {authorize_path(tenant)}"
    if failure.kind is FailureKind.SECRET:
        return "give the admin API the variable the secretRef names (as cdc-ingest and the writer have it)"
    if failure.kind is FailureKind.POLICY:
        return (
            "name only hosts and variables the deployment allows, or widen its policy (DUPLEX_SALESFORCE_HOSTS,"
            " DUPLEX_SECRET_ENV_PREFIX)"
        )
    if failure.kind is FailureKind.SESSION:
        if failure.error_code == "invalid_private_key":
            return "point spec.salesforce.auth.privateKey at the unencrypted PEM RSA key of the app's certificate"
        if failure.error_code == VAULT_NOT_CONFIGURED:
            return "set VAULT_KEYS for the admin API"
        return "give the admin API the VAULT_KEYS the services have (the key that sealed the tenant's tokens)"
    return _sign_in_fix(config, failure)


def _sign_in_fix(config: TenantConfig, failure: Failure) -> str:
    auth = config.spec.salesforce.auth
    if failure.error_code in ("invalid_client_id", "invalid_client"):
        return (
            "check spec.salesforce.auth.clientId and clientSecret against the connected app's consumer key and secret"
        )
    if auth.mode is AuthMode.PASSWORD:
        return (
            f"check the password and security token secrets of spec.salesforce.auth for {auth.username},"
            " and that the user is active and the connected app allows the password flow"
        )
    if auth.mode is AuthMode.JWT_BEARER:
        return (
            f"check that the connected app's certificate matches spec.salesforce.auth.privateKey and that"
            f" {auth.username} is pre-authorized for the app (profile or permission set)"
        )
    if auth.mode is AuthMode.CLIENT_CREDENTIALS:
        return (
            "enable the client credentials flow in the connected app and give it a run-as user"
            " (Setup → App Manager → the app → Manage → Edit Policies)"
        )
    return (
        "check spec.salesforce.auth.clientId and clientSecret against the connected app; if the grant is gone,"
        f" reconnect it: POST {authorize_path(config.tenant_id)}"
    )


def limits_check(config: TenantConfig, limits: Mapping[str, Any] | Failure | NotRead, calls: int) -> Check:
    if isinstance(limits, NotRead):
        return _not_checked(LIMITS, limits)
    if isinstance(limits, Failure):
        return _failed(LIMITS, f"/limits cannot be read ({limits})", _refused_fix(limits))
    cap = config.spec.salesforce.daily_api_cap
    daily = limits.get(DAILY_API_REQUESTS)
    if not isinstance(daily, Mapping) or not {"Max", "Remaining"} <= daily.keys():
        return _failed(
            LIMITS,
            f"/limits has no {DAILY_API_REQUESTS} Max and Remaining",
            "check spec.salesforce.apiVersion and instanceUrl: they should name a Salesforce org's REST API",
        )
    maximum, remaining = int(daily["Max"]), int(daily["Remaining"])
    detail = (
        f"{DAILY_API_REQUESTS}: {remaining:,} of {maximum:,} remaining in the rolling 24 hours;"
        f" dailyApiCap allows Duplex {cap:,} a day"
    )
    if cap > maximum:
        detail += " (more than the org's whole allocation: the org's limit comes first)"
    detail += f"; this check made {calls} API call{'s' if calls != 1 else ''}"
    if remaining <= 0:
        return _failed(
            LIMITS,
            detail,
            "the org has used its daily API requests: wait for the rolling 24 hours to free some, or raise"
            " the org's allocation",
        )
    return _passed(LIMITS, detail)


def _refused_fix(failure: Failure) -> str:
    code = failure.error_code
    if code == "REQUEST_LIMIT_EXCEEDED":
        return "the org has used its daily API requests: wait for the rolling 24 hours to free some"
    if code == "API_DISABLED_FOR_ORG":
        return "the org has no API access: enable it (Professional Edition needs the API add-on)"
    if code == "INVALID_SESSION_ID":
        return "Salesforce refused a fresh session too: check that the integration user is active"
    if failure.kind is FailureKind.UNREACHABLE:
        return "check spec.salesforce.instanceUrl, and that the admin API can reach it"
    if failure.kind is FailureKind.REFUSED:
        return "check spec.salesforce.instanceUrl and apiVersion, and that the integration user has API Enabled"
    return f"the session was lost during the check: check again, and if '{ACCESS}' fails then, follow its fix"


def _fields_by_name(describe: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(f.get("name", "")).lower(): f for f in describe.get("fields", ()) if isinstance(f, Mapping)}


def _field_setup(sobject: str, name: str) -> str:
    return f"Setup → Object Manager → {sobject} → Fields & Relationships → {name}"


def object_checks(config: TenantConfig, index: int, describe: Mapping[str, Any] | Failure | NotRead) -> list[Check]:
    """The checks of the object pair ``spec.objects[index]`` against its object's describe."""
    pair = config.spec.objects[index]
    sobject = pair.salesforce.object
    shared = sum(1 for p in config.spec.objects if p.salesforce.object == sobject) > 1
    label = f"{sobject} ({pair.name})" if shared else sobject
    at = format_path(("spec", "objects", index))
    writes = writes_to_salesforce(pair)
    deletes = pair.direction.to_crm and pair.delete_policy is DeletePolicy.PROPAGATE
    soft = pair.soft_delete_field.salesforce if pair.soft_delete_field is not None else None
    if pair.delete_policy is not DeletePolicy.SOFT_DELETE:
        soft = None
    readable = f"{label}: readable"
    rights = f"{label}: {_rights(deletes)}"
    external = f"{label}: external id {pair.salesforce.external_id_field}"
    soft_delete = f"{label}: soft-delete field {soft}"
    mapped = [f"{label}: field {f.salesforce}" for f in pair.fields]
    names = [readable, *([rights] if writes else []), external, *([soft_delete] if soft else []), *mapped]

    if isinstance(describe, NotRead):
        return [_not_checked(name, describe) for name in names]
    if isinstance(describe, Failure):
        failed = _failed(readable, f"{sobject} cannot be described ({describe})", _describe_fix(at, sobject, describe))
        skipped = NotRead(readable, f"{sobject}'s describe could not be read")
        return [failed, *(_not_checked(name, skipped) for name in names[1:])]

    fields = _fields_by_name(describe)
    checks = [_readable(readable, sobject, describe)]
    if writes:
        checks.append(_writable_object(rights, at, sobject, describe, deletes=deletes))
    checks.append(_external_id(external, at, pair, fields, writes=writes))
    if soft:
        checks.append(_soft_delete(soft_delete, at, pair, soft, fields))
    for (j, mapping), name in zip(enumerate(pair.fields), mapped, strict=True):
        where = f"{at}.fields[{j}]"
        checks.append(
            _mapped_field(name, where, sobject, mapping.salesforce, fields, pair.direction_of(mapping).to_crm)
        )
    return checks


def _rights(deletes: bool) -> str:
    return "createable, updateable and deletable" if deletes else "createable and updateable"


def _describe_fix(at: str, sobject: str, failure: Failure) -> str:
    if failure.error_code in ("NOT_FOUND", "INVALID_TYPE"):
        return (
            f"check {at}.salesforce.object, and grant the integration user Read on {sobject}"
            " (profile or permission set)"
        )
    return _refused_fix(failure)


def _readable(name: str, sobject: str, describe: Mapping[str, Any]) -> Check:
    missing = [flag for flag in ("queryable", "retrieveable") if not describe.get(flag)]
    if missing:
        return _failed(
            name,
            f"{sobject} is not {' or '.join(missing)} for the integration user",
            f"grant the integration user Read on {sobject} (profile or permission set)",
        )
    return _passed(name, "described; queryable and retrieveable")


def _writable_object(name: str, at: str, sobject: str, describe: Mapping[str, Any], *, deletes: bool) -> Check:
    needed = ["createable", "updateable", *(["deletable"] if deletes else [])]
    missing = [flag for flag in needed if not describe.get(flag)]
    why = "Duplex creates and updates its records" + (", and deletes them (deletePolicy propagate)" if deletes else "")
    if missing:
        rights = {"createable": "Create", "updateable": "Edit", "deletable": "Delete"}
        grant = " and ".join(rights[flag] for flag in missing)
        return _failed(
            name,
            f"{sobject} is not {' or '.join(missing)} for the integration user; {why}",
            f"grant the integration user {grant} on {sobject} (profile or permission set), or set {at}.direction"
            " to crm_to_app",
        )
    return _passed(name, f"{why}: allowed")


def _external_id(
    check: str, at: str, pair: ObjectPair, fields: Mapping[str, Mapping[str, Any]], *, writes: bool
) -> Check:
    sobject, name = pair.salesforce.object, pair.salesforce.external_id_field
    described = fields.get(name.lower())
    setup = _field_setup(sobject, name)
    if described is None:
        return _failed(
            check,
            f"{sobject} has no field {name} (or the integration user cannot see it)",
            f"create a Text field {name} on {sobject} with External ID and Unique ticked, or correct"
            f" {at}.salesforce.externalIdField",
        )
    if not described.get("externalId"):
        return _failed(
            check,
            f"{name} is not an External ID: Duplex cannot upsert {sobject} records on it",
            f"{setup} → Edit: tick External ID",
        )
    if not described.get("unique"):
        return _failed(
            check,
            f"{name} is not Unique: two {sobject} records could carry the same Duplex id, and upserts on it"
            " would no longer find one record",
            f"{setup} → Edit: tick Unique (after removing duplicate values)",
        )
    if writes and not described.get("createable"):
        return _failed(
            check,
            f"the integration user cannot set {name}, which every record Duplex creates carries",
            f"grant Edit on {sobject}.{name} to the integration user (field-level security)",
        )
    return _passed(check, "an External ID, Unique" + (", and writable" if writes else ""))


def _soft_delete(check: str, at: str, pair: ObjectPair, name: str, fields: Mapping[str, Mapping[str, Any]]) -> Check:
    sobject = pair.salesforce.object
    described = fields.get(name.lower())
    if described is None:
        return _failed(
            check,
            f"{sobject} has no field {name} (or the integration user cannot see it)",
            f"create a Checkbox field {name} on {sobject}, or correct {at}.softDeleteField.salesforce",
        )
    if described.get("type") != "boolean":
        return _failed(
            check,
            f"{name} is a {described.get('type')} field; a soft delete sets a checkbox",
            f"point {at}.softDeleteField.salesforce at a Checkbox field",
        )
    if pair.direction.to_crm and not described.get("updateable"):
        return _failed(
            check,
            f"the integration user cannot set {name}, which a delete coming from the app sets",
            f"grant Edit on {sobject}.{name} to the integration user (field-level security)",
        )
    return _passed(check, "a checkbox" + (" Duplex can set" if pair.direction.to_crm else ""))


def _mapped_field(
    check: str, where: str, sobject: str, name: str, fields: Mapping[str, Mapping[str, Any]], to_crm: bool
) -> Check:
    described = fields.get(name.lower())
    if described is None:
        return _failed(
            check,
            f"{sobject} has no field {name} (or the integration user cannot see it)",
            f"create {name} on {sobject} (or grant the integration user Read on it), or correct {where}.salesforce",
        )
    kind = described.get("type", "unknown type")
    if not to_crm:
        return _passed(check, f"exists ({kind}); Duplex only reads it")
    missing = [flag for flag in ("createable", "updateable") if not described.get(flag)]
    if not missing:
        return _passed(check, f"exists ({kind}); Duplex writes it: createable and updateable")
    if described.get("calculated"):
        return _failed(
            check,
            f"{name} is a formula field, which no one can write",
            f"set {where}.direction to crm_to_app",
        )
    return _failed(
        check,
        f"{name} exists ({kind}) but is not {' or '.join(missing)} for the integration user; Duplex writes it",
        f"grant Edit on {sobject}.{name} to the integration user (field-level security), or set {where}.direction"
        " to crm_to_app",
    )


def cdc_checks(config: TenantConfig, selection: Sequence[str] | Failure | NotRead) -> list[Check]:
    """One check per streamed object: is its change event selected (Tooling API)?"""
    interval = config.spec.sync.poll_interval_seconds
    checks: list[Check] = []
    chosen = {name.lower() for name in selection} if isinstance(selection, Sequence) else set()
    for sobject in streamed_objects(config):
        name = f"{sobject}: Change Data Capture"
        event = change_event_name(sobject)
        if isinstance(selection, NotRead):
            checks.append(_not_checked(name, selection))
        elif isinstance(selection, Failure):
            checks.append(
                _failed(
                    name,
                    f"the Change Data Capture selection cannot be read ({selection})",
                    "grant the integration user View Setup and Configuration, which reading the selection needs;"
                    " meanwhile cdc-ingest streams every object and gets nothing for objects not selected",
                )
            )
        elif event.lower() in chosen:
            checks.append(_passed(name, f"{event} is selected on the ChangeEvents channel: changes stream"))
        else:
            checks.append(
                _failed(
                    name,
                    f"{event} is not selected for Change Data Capture: cdc-ingest polls {sobject} every {interval} s",
                    f"Setup → Change Data Capture → add {sobject} to Selected Entities (until then, and until"
                    f" cdc-ingest restarts, Duplex polls it every {interval} s)",
                )
            )
    return checks


def preflight_checks(config: TenantConfig, facts: OrgFacts) -> list[Check]:
    """Every check, in order: access, limits, each object pair's, then CDC."""
    checks = [access_check(config, facts.access), limits_check(config, facts.limits, facts.calls)]
    for index, pair in enumerate(config.spec.objects):
        checks += object_checks(config, index, facts.describes[pair.salesforce.object])
    checks += cdc_checks(config, facts.selection)
    return checks


def failed_names(checks: Iterable[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


# ------------------------------------------------------------------------------------------------
# Reading through the tenant's Salesforce client


def _failure(exc: Exception) -> Failure:
    if isinstance(exc, ConnectionUnavailableError):
        return _unavailable(exc)
    if isinstance(exc, SalesforceApiError):
        return Failure(FailureKind.REFUSED, exc.message, exc.error_code, exc.http_status)
    if isinstance(exc, LookupError):
        return Failure(FailureKind.SECRET, str(exc))
    if isinstance(exc, VaultError):
        return Failure(FailureKind.SESSION, f"the vault cannot read the tenant's tokens ({exc})")
    if isinstance(exc, httpx.HTTPError):
        return Failure(FailureKind.UNREACHABLE, str(exc) or type(exc).__name__)
    return Failure(FailureKind.UNREACHABLE, f"the answer is not JSON ({exc})")


# A refused sign-in's codes that are Duplex's own, not Salesforce's.
_OWN_CODES = {"secret_unavailable": FailureKind.SECRET, "policy_violation": FailureKind.POLICY}


def _unavailable(exc: ConnectionUnavailableError) -> Failure:
    if exc.reason in AWAITING_CONNECT:
        return Failure(FailureKind.AWAITS_CONNECT, str(exc), exc.reason)
    if exc.reason == VAULT_NOT_CONFIGURED:
        return Failure(FailureKind.SESSION, str(exc), VAULT_NOT_CONFIGURED)
    code = exc.code or ""
    if code == "invalid_private_key":
        return Failure(FailureKind.SESSION, str(exc), code)
    return Failure(_OWN_CODES.get(code, FailureKind.SIGN_IN), str(exc), code)


_READ_ERRORS = (ConnectionUnavailableError, SalesforceApiError, LookupError, VaultError, httpx.HTTPError, ValueError)


@dataclass
class ClientReader:
    """:class:`OrgReader` over the tenant's :class:`SalesforceClient`: every read is one call, asked
    of the client's ``budget`` like any other and counted there."""

    client: SalesforceClient
    budget: UnlimitedBudget

    @property
    def calls(self) -> int:
        return self.budget.calls.get(self.client.tenant_id, 0)

    async def sign_in(self) -> SignedIn:
        try:
            session = await self.client.session()
        except _READ_ERRORS as exc:
            raise ReadError(_failure(exc)) from None
        return SignedIn(session.instance_url)

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Mapping[str, Any]:
        try:
            response = await self.client.request("GET", f"{self.client.api_base}/{path}", params=params)
            body = response.json()
        except _READ_ERRORS as exc:
            raise ReadError(_failure(exc)) from None
        if not isinstance(body, Mapping):
            raise ReadError(Failure(FailureKind.UNREACHABLE, f"the answer of /{path} is not a JSON object"))
        return body

    async def limits(self) -> Mapping[str, Any]:
        return await self._get("limits/")

    async def describe(self, sobject: str) -> Mapping[str, Any]:
        return await self._get(f"sobjects/{sobject}/describe")

    async def cdc_selection(self) -> list[str]:
        # One page: an org selects far fewer entities than a query result holds.
        body = await self._get("tooling/query/", {"q": SELECTED_ENTITIES_QUERY})
        return [str(row["SelectedEntity"]) for row in body.get("records", ()) if isinstance(row, Mapping)]

"""Declarative tenant configuration: one ``Tenant`` document per connected Salesforce org.

Operators write YAML (camelCase keys, several documents per file); Python sees frozen, snake_case
models. Validation runs in two passes so every problem can be reported with its exact path at once:

1. structural (pydantic): types, enums, names, unknown keys, secrets-by-reference only;
2. cross-field (:func:`semantic_issues`): uniqueness, references between pairs, mode-dependent keys.

Always go through :func:`parse_tenant_config` (or :func:`parse_config_sources` for files) rather
than ``TenantConfig.model_validate``, which runs only the first pass.

Admin stores each applied document as a numbered version (``config_versions``); services read the
current one with :func:`load_current`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic import model_validator as _model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

API_VERSION = "duplex.dev/v1"
KIND_TENANT = "Tenant"
MIN_SALESFORCE_API = 57
MAX_SALESFORCE_API = 62


# ---------------------------------------------------------------------------------------------
# Enumerations


class Direction(StrEnum):
    """Which way values flow for a field (or, on a pair, the default for its fields and deletes)."""

    BOTH = "both"
    APP_TO_CRM = "app_to_crm"
    CRM_TO_APP = "crm_to_app"

    @property
    def to_crm(self) -> bool:
        return self is not Direction.CRM_TO_APP

    @property
    def to_app(self) -> bool:
        return self is not Direction.APP_TO_CRM


class ConflictPolicy(StrEnum):
    """Who wins when both sides changed a field since it was last synced."""

    APP_WINS = "app_wins"
    CRM_WINS = "crm_wins"
    NEWEST_WINS = "newest_wins"
    APP_UNLESS_BLANK = "app_unless_blank"
    CRM_UNLESS_BLANK = "crm_unless_blank"


class DeletePolicy(StrEnum):
    PROPAGATE = "propagate"
    IGNORE = "ignore"
    SOFT_DELETE = "soft_delete"


class FieldType(StrEnum):
    STRING = "string"
    INT = "int"
    DECIMAL = "decimal"
    DOUBLE = "double"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    REFERENCE = "reference"
    PICKLIST = "picklist"
    MULTIPICKLIST = "multipicklist"


class OnUnresolved(StrEnum):
    """What to do with a reference whose target record has no link yet."""

    HOLD = "hold"
    OMIT = "omit"
    REJECT = "reject"


class AuthMode(StrEnum):
    OAUTH_PKCE = "oauth_pkce"
    CLIENT_CREDENTIALS = "client_credentials"
    PASSWORD = "password"


class BackfillIngestion(StrEnum):
    AUTOMATIC = "automatic"
    REST = "rest"
    BULK = "bulk"


# ---------------------------------------------------------------------------------------------
# Name rules. Each raises a custom error so messages read as rules, not regular expressions.


def _matching(pattern: str, rule: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise PydanticCustomError("invalid_name", rule)
        return value

    return AfterValidator(check)


TenantId = Annotated[
    str,
    _matching(
        r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
        "must be a lowercase DNS label (a-z, 0-9 and '-', at most 63 characters, "
        "starting and ending with a letter or digit)",
    ),
]
PairName = Annotated[
    str,
    _matching(
        r"[a-z][a-z0-9_]{0,62}",
        "must start with a lowercase letter and contain only a-z, 0-9 and '_' (at most 63 characters)",
    ),
]
AppName = Annotated[
    str,
    _matching(
        r"[A-Za-z_][A-Za-z0-9_]{0,127}",
        "must be an identifier (letters, digits and '_', not starting with a digit)",
    ),
]
# Salesforce API names: standard (Name), custom (Tier__c) and namespaced (ns__Tier__c).
SalesforceName = Annotated[
    str,
    _matching(
        r"[A-Za-z][A-Za-z0-9_]{0,79}",
        "must be a Salesforce API name (letters, digits and '_', starting with a letter)",
    ),
]
EnvVarName = Annotated[
    str,
    _matching(r"[A-Za-z_][A-Za-z0-9_]*", "must be an environment variable name (letters, digits and '_')"),
]
K8sSecretName = Annotated[
    str,
    _matching(
        r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
        "must be a Kubernetes Secret name (lowercase a-z, 0-9, '-' and '.')",
    ),
]
K8sSecretKey = Annotated[
    str,
    _matching(r"[-._a-zA-Z0-9]{1,253}", "must be a Kubernetes Secret key (a-z, A-Z, 0-9, '-', '_' and '.')"),
]
# Sent as ``Sforce-Call-Options: client=<id>`` and matched against CDC changeOrigin for echo suppression.
CallOptionsClient = Annotated[
    str,
    _matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "must be 1-64 characters of a-z, A-Z, 0-9, '_', '.', '-'"),
]
NonEmptyStr = Annotated[str, Field(min_length=1, max_length=1000)]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    # Plain http is only acceptable to reach the local salesforce-emulator; tokens must not cross a network.
    loopback = parts.hostname in _LOOPBACK_HOSTS
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise PydanticCustomError("invalid_url", "must be an https:// URL (http:// only for localhost)")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise PydanticCustomError("invalid_url", "must be a bare origin such as https://acme.my.salesforce.com")
    if parts.username or parts.password:
        raise PydanticCustomError("invalid_url", "must not contain credentials")
    return value.rstrip("/")


SalesforceUrl = Annotated[str, AfterValidator(_check_url)]


def _api_version(value: object) -> object:
    # YAML reads an unquoted 62.0 as a float; accept it rather than make every operator quote it.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{float(value):.1f}"
    return value


def _check_api_version(value: str) -> str:
    match = re.fullmatch(r"(\d+)\.0", value)
    if not match or not MIN_SALESFORCE_API <= int(match.group(1)) <= MAX_SALESFORCE_API:
        raise PydanticCustomError(
            "invalid_api_version",
            f"must be a Salesforce API version from {MIN_SALESFORCE_API}.0 to {MAX_SALESFORCE_API}.0",
        )
    return value


SalesforceApiVersion = Annotated[str, BeforeValidator(_api_version), AfterValidator(_check_api_version)]


# ---------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        # Picklist codes and similar are often written unquoted (1: Gold); they are still text.
        coerce_numbers_to_str=True,
    )


class SecretRef(_Model):
    """Where a secret lives: an environment variable, or a key of a Kubernetes Secret."""

    env: EnvVarName | None = None
    name: K8sSecretName | None = None
    key: K8sSecretKey | None = None

    @_model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        by_env = self.env is not None
        by_k8s = self.name is not None or self.key is not None
        if by_env == by_k8s or (by_k8s and (self.name is None or self.key is None)):
            raise ValueError("give either env, or both name and key")
        return self


class SecretValue(_Model):
    """A secret, always by reference, so documents (and every stored version) stay free of secrets."""

    secret_ref: SecretRef

    @_model_validator(mode="before")
    @classmethod
    def _no_inline_value(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            # The offending value is deliberately not part of the message.
            raise PydanticCustomError(
                "inline_secret",
                "inline secret values are not allowed; use {secretRef: {env: VAR}} or "
                "{secretRef: {name: SECRET, key: KEY}}",
            )
        return data


class SalesforceAuth(_Model):
    """How Duplex obtains tokens. Which keys are required depends on ``mode`` (see semantic checks)."""

    mode: AuthMode
    client_id: NonEmptyStr
    client_secret: SecretValue | None = None
    # oauth_pkce only; None means Duplex's default scopes (api refresh_token).
    scopes: tuple[NonEmptyStr, ...] | None = None
    # password only.
    username: NonEmptyStr | None = None
    password: SecretValue | None = None
    security_token: SecretValue | None = None


class SalesforceSpec(_Model):
    instance_url: SalesforceUrl
    # None: the production login host, https://login.salesforce.com.
    login_url: SalesforceUrl | None = None
    api_version: SalesforceApiVersion = f"{MAX_SALESFORCE_API}.0"
    auth: SalesforceAuth
    # Calls per rolling 24 h that Duplex may spend on this tenant (the governor enforces it).
    daily_api_cap: int = Field(gt=0)
    call_options_client: CallOptionsClient = "duplex"


class BackfillSpec(_Model):
    ingestion: BackfillIngestion = BackfillIngestion.AUTOMATIC


class SyncSpec(_Model):
    cdc: bool = True
    poll_interval_seconds: int = Field(default=30, ge=5, le=86_400)
    backfill: BackfillSpec = BackfillSpec()


Scalar = str | int | float | bool


class FilterCondition(_Model):
    """One condition on a field of one side; a filter's conditions must all hold (AND)."""

    field: str = Field(min_length=1)
    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in", min_length=1)
    not_null: bool | None = None

    @_model_validator(mode="after")
    def _one_operator(self) -> FilterCondition:
        given = [self.equals is not None, self.in_ is not None, self.not_null is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of equals, in, notNull")
        if self.not_null is False:
            raise ValueError("notNull: false matches everything; remove the condition instead")
        return self


class RecordFilter(_Model):
    app: tuple[FilterCondition, ...] = ()
    salesforce: tuple[FilterCondition, ...] = ()

    def is_empty(self) -> bool:
        return not self.app and not self.salesforce


class AppObject(_Model):
    object: AppName
    id_field: AppName = "id"


class SalesforceObject(_Model):
    object: SalesforceName
    # Every Duplex create is an upsert on this field, which makes retries idempotent.
    external_id_field: SalesforceName


class SoftDeleteField(_Model):
    """The boolean field set instead of deleting, on each side that receives deletes."""

    app: AppName | None = None
    salesforce: SalesforceName | None = None


class Transform(_Model):
    type: FieldType
    # App value -> Salesforce value; inverted for the CRM -> app direction.
    value_map: dict[NonEmptyStr, NonEmptyStr] | None = None
    max_length: int | None = Field(default=None, gt=0, le=131_072)


class Reference(_Model):
    object: PairName
    on_unresolved: OnUnresolved = OnUnresolved.HOLD


class FieldMapping(_Model):
    app: AppName
    salesforce: SalesforceName
    # None: inherit from the object pair.
    direction: Direction | None = None
    conflict_policy: ConflictPolicy | None = None
    # False: a blank value never overwrites data on the other side.
    allow_nulls: bool = False
    transform: Transform | None = None
    reference: Reference | None = None


class ObjectPair(_Model):
    name: PairName
    app: AppObject
    salesforce: SalesforceObject
    # Default for fields; also the direction in which deletes flow.
    direction: Direction = Direction.BOTH
    # Default for fields that flow both ways.
    conflict_policy: ConflictPolicy = ConflictPolicy.NEWEST_WINS
    delete_policy: DeletePolicy = DeletePolicy.PROPAGATE
    soft_delete_field: SoftDeleteField | None = None
    filter: RecordFilter | None = None
    fields: tuple[FieldMapping, ...] = Field(min_length=1)

    def direction_of(self, field: FieldMapping) -> Direction:
        return field.direction or self.direction

    def conflict_policy_of(self, field: FieldMapping) -> ConflictPolicy:
        return field.conflict_policy or self.conflict_policy

    def field_by_app(self, name: str) -> FieldMapping | None:
        return next((f for f in self.fields if f.app == name), None)

    def field_by_salesforce(self, name: str) -> FieldMapping | None:
        lowered = name.lower()
        return next((f for f in self.fields if f.salesforce.lower() == lowered), None)


class Metadata(_Model):
    name: TenantId


class TenantSpec(_Model):
    salesforce: SalesforceSpec
    sync: SyncSpec = SyncSpec()
    objects: tuple[ObjectPair, ...] = ()


class TenantConfig(_Model):
    """One tenant's whole configuration: the unit that is validated, versioned and applied."""

    api_version: Literal["duplex.dev/v1"]
    kind: Literal["Tenant"]
    metadata: Metadata
    spec: TenantSpec

    @property
    def tenant_id(self) -> str:
        return self.metadata.name

    def object_pair(self, name: str) -> ObjectPair | None:
        return next((p for p in self.spec.objects if p.name == name), None)


# ---------------------------------------------------------------------------------------------
# Cross-field checks

IssuePath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one document: where (path of YAML keys and list indexes) and what."""

    path: IssuePath
    message: str

    @property
    def where(self) -> str:
        return format_path(self.path)


def format_path(path: IssuePath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# Salesforce maintains these itself; no API call can write them.
SALESFORCE_READ_ONLY_FIELDS = frozenset(
    name.lower()
    for name in (
        "Id",
        "IsDeleted",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
        "SystemModstamp",
        "LastActivityDate",
        "LastViewedDate",
        "LastReferencedDate",
        "MasterRecordId",
    )
)
_TEXT_TYPES = frozenset({FieldType.STRING, FieldType.PICKLIST, FieldType.MULTIPICKLIST})
_PICKLIST_TYPES = frozenset({FieldType.PICKLIST, FieldType.MULTIPICKLIST})


def semantic_issues(config: TenantConfig) -> list[ConfigIssue]:
    """Every cross-field problem of a structurally valid document, in document order."""
    issues = _auth_issues(config.spec.salesforce.auth, ("spec", "salesforce", "auth"))
    pairs = config.spec.objects
    names = {p.name for p in pairs}
    issues += _duplicates([p.name for p in pairs], lambda i: ("spec", "objects", i, "name"), "object pair name")
    for i, pair in enumerate(pairs):
        issues += _pair_issues(pair, names, ("spec", "objects", i))
    return issues


def _auth_issues(auth: SalesforceAuth, at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    needs_secret = auth.mode in (AuthMode.CLIENT_CREDENTIALS, AuthMode.PASSWORD)
    if needs_secret and auth.client_secret is None:
        issues.append(ConfigIssue((*at, "clientSecret"), f"required when mode is {auth.mode}"))
    password_keys = {"username": auth.username, "password": auth.password, "securityToken": auth.security_token}
    for key, value in password_keys.items():
        if auth.mode is AuthMode.PASSWORD:
            if value is None and key != "securityToken":
                issues.append(ConfigIssue((*at, key), "required when mode is password"))
        elif value is not None:
            issues.append(ConfigIssue((*at, key), f"only allowed when mode is password (mode is {auth.mode})"))
    if auth.scopes is not None and auth.mode is not AuthMode.OAUTH_PKCE:
        issues.append(ConfigIssue((*at, "scopes"), f"only allowed when mode is oauth_pkce (mode is {auth.mode})"))
    return issues


def _duplicates(values: Sequence[str], path_of: Callable[[int], IssuePath], what: str) -> list[ConfigIssue]:
    first_seen: dict[str, int] = {}
    issues = []
    for i, value in enumerate(values):
        if value in first_seen:
            also = format_path(path_of(first_seen[value]))
            issues.append(ConfigIssue(path_of(i), f"duplicate {what} '{value}' (also at {also})"))
        else:
            first_seen[value] = i
    return issues


def _pair_issues(pair: ObjectPair, pair_names: set[str], at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    ext_id = pair.salesforce.external_id_field
    if ext_id.lower() == "id":
        issues.append(
            ConfigIssue(
                (*at, "salesforce", "externalIdField"),
                "must be a custom external-id field (such as Duplex_Id__c), not the record Id",
            )
        )
    fields_at = (*at, "fields")
    issues += _duplicates([f.app for f in pair.fields], lambda j: (*fields_at, j, "app"), "app field")
    issues += _duplicates(
        # Salesforce API names are case-insensitive.
        [f.salesforce.lower() for f in pair.fields],
        lambda j: (*fields_at, j, "salesforce"),
        "Salesforce field",
    )
    for j, field in enumerate(pair.fields):
        issues += _field_issues(pair, field, pair_names, (*fields_at, j))
    issues += _delete_issues(pair, at)
    if pair.filter is not None:
        issues += _filter_issues(pair, pair.filter, (*at, "filter"))
    return issues


def _field_issues(pair: ObjectPair, field: FieldMapping, pair_names: set[str], at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    direction = pair.direction_of(field)
    sf_name = field.salesforce
    if sf_name.lower() == pair.salesforce.external_id_field.lower():
        issues.append(
            ConfigIssue(
                (*at, "salesforce"),
                f"{sf_name} is this pair's externalIdField; Duplex writes it itself, so it cannot be mapped",
            )
        )
    if sf_name.lower() in SALESFORCE_READ_ONLY_FIELDS and direction.to_crm:
        where = (*at, "direction") if field.direction is not None else (*at, "salesforce")
        issues.append(
            ConfigIssue(
                where, f"Salesforce field {sf_name} is read-only, so the direction must be crm_to_app (is {direction})"
            )
        )
    if field.conflict_policy is not None and direction is not Direction.BOTH:
        issues.append(
            ConfigIssue(
                (*at, "conflictPolicy"),
                f"only applies to fields that sync in both directions (direction is {direction})",
            )
        )
    transform = field.transform
    if transform is not None:
        issues += _transform_issues(transform, direction, (*at, "transform"))
    is_reference_type = transform is not None and transform.type is FieldType.REFERENCE
    if field.reference is None:
        if is_reference_type:
            issues.append(ConfigIssue((*at, "reference"), "required when transform.type is reference"))
    else:
        if transform is not None and not is_reference_type:
            issues.append(
                ConfigIssue(
                    (*at, "transform", "type"),
                    f"must be reference when the field has a reference (got '{transform.type}')",
                )
            )
        if field.reference.object not in pair_names:
            known = ", ".join(sorted(pair_names))
            issues.append(
                ConfigIssue(
                    (*at, "reference", "object"),
                    f"no object pair named '{field.reference.object}' (pairs: {known})",
                )
            )
    return issues


def _transform_issues(transform: Transform, direction: Direction, at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if transform.max_length is not None and transform.type not in _TEXT_TYPES:
        issues.append(
            ConfigIssue(
                (*at, "maxLength"), f"only applies to string, picklist and multipicklist (type is {transform.type})"
            )
        )
    value_map = transform.value_map
    if value_map is None:
        return issues
    if transform.type not in _PICKLIST_TYPES:
        issues.append(
            ConfigIssue((*at, "valueMap"), f"only applies to picklist and multipicklist (type is {transform.type})")
        )
        return issues
    if transform.type is FieldType.MULTIPICKLIST:
        for app_value, sf_value in value_map.items():
            if ";" in app_value or ";" in sf_value:
                issues.append(
                    ConfigIssue(
                        (*at, "valueMap", app_value),
                        "multipicklist values cannot contain ';' (Salesforce separates values with it)",
                    )
                )
    if direction.to_app:
        first_app_value: dict[str, str] = {}
        for app_value, sf_value in value_map.items():
            earlier = first_app_value.setdefault(sf_value, app_value)
            if earlier != app_value:
                issues.append(
                    ConfigIssue(
                        (*at, "valueMap", app_value),
                        f"Salesforce value '{sf_value}' is also mapped from '{earlier}', so it cannot be mapped "
                        f"back to one app value (the field flows CRM to app; direction is {direction})",
                    )
                )
    return issues


def _delete_issues(pair: ObjectPair, at: IssuePath) -> list[ConfigIssue]:
    soft = pair.soft_delete_field
    if pair.delete_policy is not DeletePolicy.SOFT_DELETE:
        if soft is None:
            return []
        return [ConfigIssue((*at, "softDeleteField"), "only allowed when deletePolicy is soft_delete")]
    if soft is None:
        return [ConfigIssue((*at, "softDeleteField"), "required when deletePolicy is soft_delete")]
    issues = []
    # Deletes flow in the pair's direction; each receiving side needs a field to mark instead.
    if pair.direction.to_crm and soft.salesforce is None:
        issues.append(
            ConfigIssue(
                (*at, "softDeleteField", "salesforce"),
                f"required: deletes flow to Salesforce (direction is {pair.direction})",
            )
        )
    if pair.direction.to_app and soft.app is None:
        issues.append(
            ConfigIssue(
                (*at, "softDeleteField", "app"), f"required: deletes flow to the app (direction is {pair.direction})"
            )
        )
    return issues


def _filter_issues(pair: ObjectPair, record_filter: RecordFilter, at: IssuePath) -> list[ConfigIssue]:
    issues = []
    # Services only ever hold the mapped fields of a record, so only those can be filtered on.
    for k, condition in enumerate(record_filter.app):
        if pair.field_by_app(condition.field) is None:
            issues.append(
                ConfigIssue((*at, "app", k, "field"), f"'{condition.field}' is not a mapped app field of this pair")
            )
    for k, condition in enumerate(record_filter.salesforce):
        if pair.field_by_salesforce(condition.field) is None:
            issues.append(
                ConfigIssue(
                    (*at, "salesforce", k, "field"),
                    f"'{condition.field}' is not a mapped Salesforce field of this pair",
                )
            )
    return issues


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into issues an operator can act on

# Key names under which a value may be a secret: their values are never echoed back.
_SECRET_KEYS = frozenset({"clientSecret", "password", "securityToken", "secretRef"})
_MAX_ECHO = 60


class ConfigInvalidError(ValueError):
    """A document failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{i.where}: {i.message}" if i.path else i.message for i in issues))


def parse_tenant_config(data: object) -> TenantConfig:
    """Validate one document (a parsed mapping) fully; raises :class:`ConfigInvalidError`."""
    try:
        config = TenantConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A container whose items failed is also reported as too short; the item errors say it better.
        locs = [tuple(e["loc"]) for e in errors]
        specific = [
            e for e in errors if not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == e["loc"] for o in locs)
        ]
        raise ConfigInvalidError([_issue_from_error(e) for e in specific]) from None
    issues = semantic_issues(config)
    if issues:
        raise ConfigInvalidError(issues)
    return config


def _issue_from_error(error: ErrorDetails) -> ConfigIssue:
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return ConfigIssue(loc, "required")
    if kind == "extra_forbidden":
        # Never echo the value: an unknown key is often a misspelt secret key.
        return ConfigIssue(loc, _unknown_key_message(loc))
    if kind in ("enum", "literal_error"):
        allowed = ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        message = f"must be one of {allowed}"
    elif kind == "model_type" or kind == "model_attributes_type" or kind == "dict_type":
        message = "must be a mapping"
    elif kind in ("tuple_type", "list_type"):
        message = "must be a list"
    elif kind in ("bool_type", "bool_parsing"):
        message = "must be true or false"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = "must be a whole number"
    elif kind in ("float_type", "float_parsing"):
        message = "must be a number"
    elif kind == "string_type":
        message = "must be text"
    else:
        message = error["msg"]
        for prefix, replacement in (
            ("Value error, ", ""),
            ("Input should be", "must be"),
            ("String should", "must"),
            ("Tuple should", "must"),
            ("Dictionary should", "must"),
        ):
            if message.startswith(prefix):
                message = replacement + message[len(prefix) :]
    echo = _echo(error["input"], loc, kind)
    return ConfigIssue(loc, f"{message} (got {echo})" if echo else message)


def _echo(value: object, loc: IssuePath, kind: str) -> str | None:
    if kind == "inline_secret" or any(part in _SECRET_KEYS for part in loc):
        return None
    if value is None or isinstance(value, bool | int | float):
        return "null" if value is None else json.dumps(value)
    if isinstance(value, str):
        shown = value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."
        return repr(shown)
    return None


def _unknown_key_message(loc: IssuePath) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown field"
    allowed = sorted(_aliases(model))
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown field ({hint}allowed: {', '.join(allowed)})"


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: IssuePath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (to list its allowed keys), if any."""
    current: Any = TenantConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) not in (tuple, list):
                return None
            current = get_args(current)[0]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            by_alias = {info.alias or name: info.annotation for name, info in current.model_fields.items()}
            if part not in by_alias:
                return None
            current = by_alias[part]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


# ---------------------------------------------------------------------------------------------
# Files: YAML with several documents


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 surprises: duplicate keys are errors, only true/false are
    booleans (a country code NO stays a string) and dates stay strings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class LoadedDocument:
    source: str
    index: int  # 1-based among the source's non-empty documents
    config: TenantConfig


class ConfigFileError(ValueError):
    """One or more sources are invalid; ``problems`` holds one formatted line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


def parse_config_sources(sources: Iterable[tuple[str, str]]) -> list[LoadedDocument]:
    """Parse and validate ``(name, text)`` sources. All or nothing: any problem raises
    :class:`ConfigFileError` listing every problem as ``name: [document N: ]path: message``."""
    problems: list[str] = []
    loaded: list[LoadedDocument] = []
    for source, text in sources:
        try:
            documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{source}: {_yaml_message(exc)}")
            continue
        if not documents:
            problems.append(f"{source}: no documents")
        for index, document in enumerate(documents, start=1):
            prefix = f"{source}: document {index}: " if len(documents) > 1 else f"{source}: "
            if not isinstance(document, dict):
                problems.append(f"{prefix}must be a mapping with apiVersion, kind, metadata and spec")
                continue
            try:
                loaded.append(LoadedDocument(source, index, parse_tenant_config(document)))
            except ConfigInvalidError as exc:
                problems += [f"{prefix}{i.where}: {i.message}" if i.path else prefix + i.message for i in exc.issues]
    problems += _duplicate_tenants(loaded)
    if problems:
        raise ConfigFileError(problems)
    return loaded


def parse_config_file(source: str, text: str) -> list[TenantConfig]:
    return [d.config for d in parse_config_sources([(source, text)])]


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {exc.problem}"
    return f"invalid YAML: {exc}"


def _duplicate_tenants(loaded: Sequence[LoadedDocument]) -> list[str]:
    first: dict[str, LoadedDocument] = {}
    problems = []
    for doc in loaded:
        seen = first.setdefault(doc.config.tenant_id, doc)
        if seen is not doc:
            problems.append(
                f"{doc.source}: document {doc.index}: metadata.name: tenant '{doc.config.tenant_id}' is "
                f"defined more than once (also {seen.source} document {seen.index})"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Canonical form: what is stored, hashed and shown


def to_document(config: TenantConfig) -> dict[str, Any]:
    """The JSON-ready document with every default made explicit (``show`` prints this)."""
    return config.model_dump(mode="json", by_alias=True, exclude_none=True)


def canonical_json(config: TenantConfig) -> str:
    # Sorted keys and fixed separators so equal configurations hash equally, whatever the input order.
    return json.dumps(to_document(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_sha256(config: TenantConfig) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading stored versions (shared by admin and every service that needs a tenant's mapping)


class QueryConnection(Protocol):
    """What is needed of an asyncpg ``Connection`` or ``Pool``."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class StoredConfig:
    tenant_id: str
    version: int
    sha256: str
    applied_at: datetime
    applied_by: str
    config: TenantConfig


class TenantNotFoundError(LookupError):
    def __init__(self, tenant_id: str, version: int | None = None) -> None:
        self.tenant_id = tenant_id
        self.version = version
        what = f"tenant '{tenant_id}'" if version is None else f"version {version} of tenant '{tenant_id}'"
        super().__init__(f"{what} has no stored configuration")


_SELECT_VERSION = """
    SELECT tenant_id, version, sha256, applied_at, applied_by, document
    FROM config_versions
    WHERE tenant_id = $1 AND ($2::integer IS NULL OR version = $2)
    ORDER BY version DESC
    LIMIT 1
"""


async def fetch_config(conn: QueryConnection, tenant_id: str, version: int | None = None) -> StoredConfig | None:
    """A stored version (the latest when ``version`` is None), or None when there is none."""
    row = await conn.fetchrow(_SELECT_VERSION, tenant_id, version)
    if row is None:
        return None
    document = row["document"]
    # Works whether or not the connection has a jsonb codec registered.
    if isinstance(document, str):
        document = json.loads(document)
    return StoredConfig(
        tenant_id=row["tenant_id"],
        version=row["version"],
        sha256=row["sha256"],
        applied_at=row["applied_at"],
        applied_by=row["applied_by"],
        config=parse_tenant_config(document),
    )


async def load_current(conn: QueryConnection, tenant_id: str) -> TenantConfig:
    """The tenant's current configuration; raises :class:`TenantNotFoundError` if it has none."""
    stored = await fetch_config(conn, tenant_id)
    if stored is None:
        raise TenantNotFoundError(tenant_id)
    return stored.config

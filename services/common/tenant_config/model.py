"""The tenant document as Python sees it: frozen, snake_case pydantic models and their enumerations.

Validating a model runs only the structural pass (types, enums, names, unknown keys,
secrets-by-reference only); :func:`services.common.tenant_config.parse_tenant_config` adds the
cross-field pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import model_validator as _model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from services.common.tenant_config.api_versions import known_api_versions, version_number

API_VERSION = "duplex.dev/v1"
KIND_TENANT = "Tenant"


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
    # Connected through a browser (the admin API's connect flow); the tokens live in the vault.
    OAUTH_PKCE = "oauth_pkce"
    # The rest sign in server-side, with credentials the tenant's document names by reference.
    CLIENT_CREDENTIALS = "client_credentials"
    PASSWORD = "password"
    # OAuth 2.0 JWT bearer: an assertion signed with the connected app's certificate key.
    JWT_BEARER = "jwt_bearer"

    @property
    def server_side(self) -> bool:
        """Services sign in by themselves, with no browser step and no refresh token."""
        return self is not AuthMode.OAUTH_PKCE


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
    # Every version Salesforce serves is accepted, including ones newer than Duplex's list (a pinned
    # org may already run the next release): that is a warning (validation.config_warnings), not an error.
    known = known_api_versions()
    if version_number(value) is None:
        raise PydanticCustomError(
            "invalid_api_version", f"must be a Salesforce API version such as {known.latest.version}"
        )
    if known.is_retired(value):
        raise PydanticCustomError(
            "retired_api_version",
            f"Salesforce retired API version {value} and answers it with 410 GONE; "
            f"use {known.oldest.version} or later (the latest Duplex knows is {known.latest.version})",
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
    # password and jwt_bearer (the assertion's sub).
    username: NonEmptyStr | None = None
    # password only.
    password: SecretValue | None = None
    security_token: SecretValue | None = None
    # jwt_bearer only: the PEM RSA key of the certificate uploaded to the connected app.
    private_key: SecretValue | None = None


class SalesforceSpec(_Model):
    instance_url: SalesforceUrl
    # None: the production login host, https://login.salesforce.com.
    login_url: SalesforceUrl | None = None
    # Left out: the latest release Duplex knows (api_versions' data file), read when the document is parsed.
    api_version: SalesforceApiVersion = Field(default_factory=lambda: known_api_versions().latest.version)
    auth: SalesforceAuth
    # Calls per rolling 24 h that Duplex may spend on this tenant (the governor enforces it).
    daily_api_cap: int = Field(gt=0)
    call_options_client: CallOptionsClient = "duplex"


class BackfillSpec(_Model):
    ingestion: BackfillIngestion = BackfillIngestion.AUTOMATIC


class SyncSpec(_Model):
    cdc: bool = True
    poll_interval_seconds: int = Field(default=30, ge=5, le=86_400)
    # How often cdc-ingest describes the mapped objects again to catch schema changes (drift).
    schema_refresh_hours: int = Field(default=24, ge=1, le=720)
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
    # A SOQL WHERE clause on the Salesforce object (services/common/soql_filter.py): pushed into
    # backfill queries, and evaluated on each changed record's whole current state.
    soql: str | None = Field(default=None, min_length=1, max_length=4000)
    # What becomes of a synced record that stops matching: it stops being synced ("stop"), or it is
    # also deleted on the other side, or archived, as the pair's deletePolicy says ("delete"), and
    # brought back when it matches again.
    on_leave: Literal["stop", "delete"] = "stop"


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


class Classification(_Model):
    """One typed filter: records the clause selects get ``value`` in the rule's app field."""

    soql: str = Field(min_length=1, max_length=4000)
    value: NonEmptyStr


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
    # Typed filters (crm_to_app only): the app field gets the value of the first clause the
    # Salesforce record matches, and a record matching none is not synced.
    classify: tuple[Classification, ...] | None = Field(default=None, min_length=1, max_length=50)


class Schedule(_Model):
    """When cdc-ingest reads the pair without being asked (services/cdc_ingest/jobs.py)."""

    # Seconds between polls of the pair's object when it is polled (CDC off for the tenant or not
    # selected for the object); spec.sync.pollIntervalSeconds when unset.
    poll_interval_seconds: int | None = Field(default=None, ge=5, le=86_400)
    # How often to reconcile: compare Salesforce with what Duplex holds and repair what differs
    # (changes no event reports). Never when unset; a reconcile can always be asked for.
    reconcile: Literal["hourly", "daily", "weekly"] | None = None


RECONCILE_EVERY: Mapping[str, int] = {"hourly": 3_600, "daily": 86_400, "weekly": 604_800}


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
    # App fields deliberately left unmapped: mapping suggestions list them as ignored, not as open.
    ignored_fields: tuple[AppName, ...] = ()
    schedule: Schedule | None = None

    @property
    def poll_interval_seconds(self) -> int | None:
        return self.schedule.poll_interval_seconds if self.schedule else None

    @property
    def reconcile_every_seconds(self) -> int | None:
        reconcile = self.schedule.reconcile if self.schedule else None
        return RECONCILE_EVERY[reconcile] if reconcile else None

    @property
    def filtered(self) -> bool:
        """Some records may not be synced: the pair has a record filter or typed filters."""
        return self.filter is not None or any(f.classify is not None for f in self.fields)

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

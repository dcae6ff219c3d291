"""The orgs one emulator process hosts: their users, connected apps, objects and faults.

Orgs are defined by specs (from the seed file or the admin API) and kept as :class:`OrgState`
documents in SQLite, next to the records when a data file is configured. Ids are derived from the
org alias and the username, so the same seed yields the same org and user ids on every machine and
after every restart, and records kept in the data file stay attached to their org.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.salesforce_emulator import ids
from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.formula import compile_cached
from services.salesforce_emulator.schema import (
    STANDARD_OBJECTS,
    FieldDef,
    FieldType,
    ObjectDef,
    custom_metadata_type,
    custom_object,
)
from services.salesforce_emulator.validation import check_values, deserialize, plan_for

Edition = Literal["developer", "professional", "enterprise", "unlimited", "performance"]

# Scopes a connected app gets when its spec names none.
DEFAULT_SCOPES = ("api", "refresh_token", "offline_access", "openid", "web", "full")


class OrgError(Exception):
    """A spec or admin request the org model refuses (unknown org, duplicate username, bad field)."""


class UnknownFieldError(OrgError):
    """The object has no such custom field."""


class UnknownMetadataTypeError(OrgError):
    """The org has no such custom metadata type."""


def jwt_signing_key(pem: str) -> RSAPublicKey:
    """The RSA key that verifies a connected app's JWT bearer assertions, from its PEM certificate.

    Salesforce takes an X.509 certificate ("Use digital signatures"); only its public key matters
    for verification, so a bare PEM public key is accepted as well. Raises ValueError for anything
    else, including a non-RSA key: Salesforce signs and verifies these assertions with RS256 only.
    """
    data = pem.strip().encode()
    key: object
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE-----"):
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        msg = "not a PEM certificate or public key"
        raise ValueError(msg) from exc
    if not isinstance(key, RSAPublicKey):
        msg = "the JWT bearer flow verifies RS256 signatures: the certificate's key must be RSA"
        raise ValueError(msg)
    return key


def _usable_certificate(value: str | None) -> str | None:
    if value is not None:
        jwt_signing_key(value)
    return value


class PicklistValueSpec(BaseModel):
    """A picklist value whose label differs from its API value (``cust_direct`` / ``Customer - Direct``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str = Field(min_length=1)
    # Empty: the label is the value.
    label: str = ""


class FieldSpec(BaseModel):
    """A custom field as the seed file and the admin API describe it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: FieldType
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    required: bool = False
    external_id: bool = False
    unique: bool = False
    # A formula field is computed by the store on read and can never be written.
    formula: str | None = None
    # Read-only for everyone (as a system-maintained or roll-up field would be).
    readonly: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    # Plain strings (the label is the value) or {value, label} objects.
    picklist_values: tuple[str | PicklistValueSpec, ...] = ()
    default_value: str | bool | int | float | None = None

    @field_validator("name")
    @classmethod
    def _custom_suffix(cls, value: str) -> str:
        if not value.endswith("__c") or not value[:-3].replace("_", "").isalnum():
            msg = f"custom field names look like Duplex_Id__c, not {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("picklist_values")
    @classmethod
    def _distinct_values(cls, values: tuple[str | PicklistValueSpec, ...]) -> tuple[str | PicklistValueSpec, ...]:
        # Setup refuses a value that is already in the list, whatever its case.
        seen: set[str] = set()
        for entry in values:
            value = entry if isinstance(entry, str) else entry.value
            if value.lower() in seen:
                msg = f"picklist value {value!r} is listed twice"
                raise ValueError(msg)
            seen.add(value.lower())
        return values

    @property
    def picklist_entries(self) -> tuple[tuple[str, str], ...]:
        """(value, label) of every picklist value."""
        return tuple(
            (entry, entry) if isinstance(entry, str) else (entry.value, entry.label or entry.value)
            for entry in self.picklist_values
        )

    def to_field_def(self) -> FieldDef:
        length = self.length or (255 if self.type in ("string", "picklist", "url") else 0)
        if self.type == "reference":
            length = 18
        writable = not self.readonly and self.formula is None
        entries = self.picklist_entries
        labels = tuple(label for _, label in entries)
        values = tuple(value for value, _ in entries)
        return FieldDef(
            name=self.name,
            type=self.type,
            label=self.label or self.name[:-3].replace("_", " "),
            length=length,
            precision=self.precision or (18 if self.type in ("double", "currency", "percent") else 0),
            scale=self.scale,
            nillable=not self.required or self.formula is not None,
            createable=writable,
            updateable=writable,
            calculated=self.formula is not None,
            formula=self.formula,
            custom=True,
            external_id=self.external_id,
            unique=self.unique,
            reference_to=self.reference_to,
            relationship_name=self.relationship_name or (self.name[:-3] + "__r" if self.type == "reference" else None),
            picklist_values=values,
            # Kept empty when every label is its value, so such a field compares equal to one defined
            # before labels existed.
            picklist_labels=labels if labels != values else (),
            defaulted_on_create=self.default_value is not None,
            default_value=self.default_value,
        )


class ObjectSpec(BaseModel):
    """Additions to a standard object, or a whole custom object (``Partner_Tier__c``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str | None = None
    # None keeps the current setting (on for every object unless turned off).
    cdc_enabled: bool | None = None
    fields: tuple[FieldSpec, ...] = ()


# Field types a custom metadata type can have (Setup offers no lookup, currency, multi-select or
# formula field on one; its relationships are "Metadata Relationship" fields, not modelled here).
METADATA_FIELD_TYPES: frozenset[FieldType] = frozenset(
    {
        "string",
        "textarea",
        "boolean",
        "int",
        "double",
        "percent",
        "date",
        "datetime",
        "email",
        "phone",
        "url",
        "picklist",
    }
)
# DeveloperName: letters, digits and single underscores, starting with a letter, not ending in "_".
_DEVELOPER_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|_(?!_))*(?<!_)$")
MetadataValue = str | bool | int | float | None


class MetadataTypeSpec(BaseModel):
    """A custom metadata type (``Region_Mapping__mdt``) with its custom fields and its records.

    Each record is a flat mapping: ``DeveloperName`` (required), ``MasterLabel`` (defaults to the
    developer name with spaces) and values of the type's custom fields by API name. Id, Label,
    QualifiedApiName, NamespacePrefix, Language and IsProtected are derived.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str | None = None
    plural_label: str | None = None
    fields: tuple[FieldSpec, ...] = ()
    records: tuple[dict[str, MetadataValue], ...] = ()

    @model_validator(mode="after")
    def _metadata_fields(self) -> MetadataTypeSpec:
        for f in self.fields:
            if f.type not in METADATA_FIELD_TYPES:
                msg = f"custom metadata types have no {f.type} fields ({f.name})"
                raise ValueError(msg)
            if f.formula is not None:
                msg = f"custom metadata types have no formula fields ({f.name})"
                raise ValueError(msg)
        return self


class UserSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str
    password: SecretStr
    email: str | None = None
    first_name: str = ""
    last_name: str = "User"
    # Appended to the password by clients that use one (SOAP login, password grant); may be empty.
    security_token: SecretStr = SecretStr("")
    # Field-level security: ``Object.Field`` names this user can read but never write.
    readonly_fields: tuple[str, ...] = ()
    # The "View Setup and Configuration" permission: without it setup objects, such as the Tooling
    # API's PlatformEventChannelMember, do not exist for the user.
    view_setup: bool = True


class ClientSpec(BaseModel):
    """A connected app: its consumer key and secret and how it may obtain tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    client_id: str
    client_secret: SecretStr
    redirect_uris: tuple[str, ...] = ()
    pkce_required: bool = True
    # When off, a public client (PKCE) may exchange codes and refresh tokens without its secret.
    require_secret: bool = False
    refresh_token_rotation: bool = False
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    # Runs client-credentials calls as this user; no user means the flow is disabled for the app.
    execution_user: str | None = None
    # The PEM certificate (or RSA public key) that verifies the app's JWT bearer assertions; none
    # means the flow is disabled for the app.
    certificate: str | None = None

    _certificate = field_validator("certificate")(_usable_certificate)


class CertificateSpec(BaseModel):
    """A connected app's JWT bearer certificate, set or (with ``null``) removed at runtime."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: str | None

    _certificate = field_validator("certificate")(_usable_certificate)


class OrgSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str
    name: str = ""
    edition: Edition = "developer"
    licenses: int = Field(default=2, ge=0)
    default: bool = False
    users: tuple[UserSpec, ...] = ()
    clients: tuple[ClientSpec, ...] = ()
    objects: Mapping[str, ObjectSpec] = Field(default_factory=dict)
    metadata_types: Mapping[str, MetadataTypeSpec] = Field(default_factory=dict)

    @field_validator("alias")
    @classmethod
    def _alias_shape(cls, value: str) -> str:
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            msg = f"org aliases are letters, digits, '-' and '_': {value!r}"
            raise ValueError(msg)
        return value


class User(BaseModel):
    """A user as kept: the password only as a salted scrypt hash."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    username: str
    email: str
    first_name: str
    last_name: str
    password_hash: str
    # Salesforce also accepts password + security token; kept only as the hash of that concatenation.
    password_with_token_hash: str | None = None
    readonly_fields: frozenset[str] = frozenset()
    active: bool = True
    view_setup: bool = True

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def password_matches(self, candidate: str) -> bool:
        """Salesforce accepts the password alone (trusted IP) or password + security token."""
        if verify_password(self.password_hash, candidate):
            return True
        return self.password_with_token_hash is not None and verify_password(self.password_with_token_hash, candidate)


class OAuthClient(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    client_id: str
    # Kept in the clear: token signatures are HMACs keyed by it.
    client_secret: str
    redirect_uris: tuple[str, ...]
    pkce_required: bool
    require_secret: bool
    refresh_token_rotation: bool
    scopes: tuple[str, ...]
    execution_user_id: str | None
    # Defaults to None so org documents persisted before the JWT bearer flow still load.
    certificate: str | None = None

    def secret_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(self.client_secret.encode(), candidate.encode())

    def jwt_key(self) -> RSAPublicKey | None:
        """The key that verifies the app's JWT bearer assertions; None when it has no certificate."""
        return jwt_signing_key(self.certificate) if self.certificate is not None else None


class OrgState(BaseModel):
    """Everything persisted about an org."""

    org_id: str
    alias: str
    name: str
    edition: Edition
    licenses: int
    users: list[User] = Field(default_factory=list)
    clients: list[OAuthClient] = Field(default_factory=list)
    objects: dict[str, ObjectSpec] = Field(default_factory=dict)
    # Defaults to empty so org documents persisted before custom metadata types still load.
    metadata_types: dict[str, MetadataTypeSpec] = Field(default_factory=dict)
    # Custom objects' and custom metadata types' key prefixes, kept after a type is deleted.
    key_prefixes: dict[str, str] = Field(default_factory=dict)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    # A modest scrypt cost: these are local development credentials, but still never kept in the clear.
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**12, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(stored: str, candidate: str) -> bool:
    scheme, _, rest = stored.partition("$")
    salt_hex, _, digest_hex = rest.partition("$")
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(candidate.encode(), salt=bytes.fromhex(salt_hex), n=2**12, r=8, p=1)
    return hmac.compare_digest(digest.hex(), digest_hex)


def derived_id(key_prefix: str, *parts: str) -> str:
    """A stable 18-character id for ``parts`` (org alias, username), so seeds are reproducible."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return ids.IdFactory(start=int.from_bytes(digest[:8], "big") % 62**10).next(key_prefix)


def _custom_prefix(n: int, first: str = "a") -> str:
    # Custom objects get a00, a01, … a0z, a10, … in definition order, as in a fresh org; custom
    # metadata types likewise m00, m01, … (a real org's first type's records are m00…).
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return first + alphabet[n // len(alphabet) % len(alphabet)] + alphabet[n % len(alphabet)]


def _metadata_label(name: str) -> str:
    return name[: -len("__mdt")].replace("_", " ")


def metadata_rows(org: OrgState, name: str, spec: MetadataTypeSpec, obj: ObjectDef) -> tuple[dict[str, JsonValue], ...]:
    """The records of a custom metadata type as SOQL and REST read them; ValueError for a bad record."""
    plan = plan_for(obj)
    custom = [f.name for f in obj.fields if f.custom]
    required = [f.name for f in obj.fields if f.custom and not f.nillable]
    checkboxes = [f.name for f in obj.fields if f.custom and f.type == "boolean"]
    rows: list[dict[str, JsonValue]] = []
    seen: set[str] = set()
    for record in spec.records:
        given = {k.lower(): (k, v) for k, v in record.items()}
        developer = given.pop("developername", (None, None))[1]
        if not isinstance(developer, str) or not _DEVELOPER_NAME.match(developer) or len(developer) > 40:
            msg = f"{name}: each record needs a DeveloperName of letters, digits and single underscores: {record}"
            raise ValueError(msg)
        if developer.lower() in seen:
            msg = f"{name}: DeveloperName {developer!r} is used twice"
            raise ValueError(msg)
        seen.add(developer.lower())
        master = given.pop("masterlabel", (None, developer.replace("_", " ")))[1]
        if not isinstance(master, str) or not master or len(master) > 40:
            msg = f"{name}.{developer}: MasterLabel is text of 1 to 40 characters"
            raise ValueError(msg)
        stray = [key for key, _ in given.values() if plan.field(key) is None or not plan.by_lower[key.lower()].custom]
        if stray:
            msg = f"{name}.{developer}: not custom fields of the type: {', '.join(stray)}"
            raise ValueError(msg)
        try:
            values, _ = deserialize(plan, dict(given.values()))
            check_values(plan, values)
        except SalesforceError as exc:
            raise ValueError(f"{name}.{developer}: {exc.message}") from exc
        values = {**{k: v for k, v in plan.defaults if k in custom}, **values}
        # A checkbox is never null in Salesforce: unset is false.
        values.update({f: False for f in checkboxes if values.get(f) is None})
        missing = [f for f in required if values.get(f) is None]
        if missing:
            msg = f"{name}.{developer}: required fields are missing: {', '.join(missing)}"
            raise ValueError(msg)
        rows.append(
            {
                "Id": derived_id(obj.key_prefix, "custom-metadata", org.alias, name, developer.lower()),
                "DeveloperName": developer,
                "MasterLabel": master,
                "Language": "en_US",
                "NamespacePrefix": None,
                "Label": master,
                "QualifiedApiName": developer,
                "IsProtected": False,
                **{f: values.get(f) for f in custom},
            }
        )
    return tuple(rows)


@dataclass
class Org:
    """One live org: its persisted state plus the derived object definitions and current faults."""

    state: OrgState
    faults: OrgFaults = field(default_factory=OrgFaults)
    objects: dict[str, ObjectDef] = field(default_factory=dict)
    # Bumped on every schema change, so describe caches and Avro schemas can be invalidated.
    schema_generation: int = 0
    # The records of each custom metadata type, derived from the type's spec.
    metadata_records: dict[str, tuple[dict[str, JsonValue], ...]] = field(default_factory=dict)

    @property
    def org_id(self) -> str:
        return self.state.org_id

    @property
    def alias(self) -> str:
        return self.state.alias

    @property
    def default_user(self) -> User:
        if not self.state.users:
            msg = f"org {self.alias} has no users"
            raise OrgError(msg)
        return self.state.users[0]

    def user(self, user_id: str) -> User | None:
        return next((u for u in self.state.users if ids.same(u.user_id, user_id)), None)

    def user_by_name(self, username: str) -> User | None:
        lowered = username.lower()
        return next((u for u in self.state.users if u.username.lower() == lowered), None)

    def client(self, client_id: str) -> OAuthClient | None:
        return next((c for c in self.state.clients if c.client_id == client_id), None)

    def rebuild_objects(self) -> None:
        """Derive every ObjectDef (and custom metadata record) from the standard objects and the org's specs.

        Raises ValueError when a spec does not build (a custom metadata record that does not fit its type).
        """
        built = {o.name: o for o in STANDARD_OBJECTS}
        records: dict[str, tuple[dict[str, JsonValue], ...]] = {}
        for name, mdt in self.state.metadata_types.items():
            label = mdt.label or _metadata_label(name)
            obj = custom_metadata_type(
                name,
                self.state.key_prefixes[name],
                label,
                mdt.plural_label or label,
                [f.to_field_def() for f in mdt.fields],
            )
            records[name] = metadata_rows(self.state, name, mdt, obj)
            built[name] = obj
        for name, spec in self.state.objects.items():
            extra = [f.to_field_def() for f in spec.fields]
            base = built.get(name)
            if base is None:
                prefix = self.state.key_prefixes[name]
                base = custom_object(name, prefix, spec.label or name[:-3].replace("_", " "), extra)
            else:
                base = base.with_fields(extra)
            if spec.cdc_enabled is not None:
                base = ObjectDef(
                    base.name,
                    base.key_prefix,
                    base.label,
                    base.label_plural,
                    base.fields,
                    custom=base.custom,
                    cdc_enabled=spec.cdc_enabled,
                )
            built[name] = base
        self.objects = built
        self.metadata_records = records
        self.schema_generation += 1


def _merge_object(current: ObjectSpec | None, extra: ObjectSpec) -> ObjectSpec:
    if current is None:
        return extra
    names = {f.name.lower() for f in extra.fields}
    kept = tuple(f for f in current.fields if f.name.lower() not in names)
    return ObjectSpec(
        label=extra.label or current.label,
        cdc_enabled=extra.cdc_enabled if extra.cdc_enabled is not None else current.cdc_enabled,
        fields=kept + extra.fields,
    )


class OrgRepository:
    """Org documents in SQLite (a file shared with the record store, or ``:memory:``)."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = connection
        self._lock = lock
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS emulator_orgs (org_id TEXT PRIMARY KEY, alias TEXT UNIQUE NOT NULL,"
                " state TEXT NOT NULL)"
            )

    def load(self) -> list[OrgState]:
        with self._lock:
            rows = self._db.execute("SELECT state FROM emulator_orgs ORDER BY rowid").fetchall()
        return [OrgState.model_validate_json(row[0]) for row in rows]

    def save(self, state: OrgState) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO emulator_orgs (org_id, alias, state) VALUES (?, ?, ?)"
                " ON CONFLICT(org_id) DO UPDATE SET state = excluded.state",
                (state.org_id, state.alias, state.model_dump_json()),
            )


class OrgRegistry:
    """All orgs of the process. Thread-safe: the gRPC server authenticates from its own threads."""

    def __init__(self, repository: OrgRepository) -> None:
        self._repository = repository
        self._orgs: dict[str, Org] = {}
        self._default_alias: str | None = None
        self._lock = threading.RLock()
        self._listeners: list[Callable[[str], None]] = []
        for state in repository.load():
            org = Org(state)
            org.rebuild_objects()
            self._orgs[state.org_id] = org

    # Lookups ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Org]:
        with self._lock:
            return iter(list(self._orgs.values()))

    def get(self, org_ref: str) -> Org:
        """An org by 15/18-character id or alias; :class:`OrgError` when there is none."""
        with self._lock:
            for org in self._orgs.values():
                if org.alias == org_ref or (len(org_ref) in (15, 18) and ids.same(org.org_id, org_ref)):
                    return org
        msg = f"no org {org_ref!r}"
        raise OrgError(msg)

    def find(self, org_ref: str) -> Org | None:
        try:
            return self.get(org_ref)
        except OrgError:
            return None

    @property
    def default_org(self) -> Org:
        with self._lock:
            if self._default_alias is not None:
                return self.get(self._default_alias)
            if not self._orgs:
                msg = "no orgs defined"
                raise OrgError(msg)
            return next(iter(self._orgs.values()))

    def find_client(self, client_id: str) -> tuple[Org, OAuthClient] | None:
        with self._lock:
            for org in self._orgs.values():
                client = org.client(client_id)
                if client is not None:
                    return org, client
        return None

    def find_user(self, username: str) -> tuple[Org, User] | None:
        """Usernames are unique across all orgs, as they are across Salesforce."""
        with self._lock:
            for org in self._orgs.values():
                user = org.user_by_name(username)
                if user is not None:
                    return org, user
        return None

    # The callables the record store, query engine and CDC take --------------------------------

    def schema_for(self, org_id: str) -> Mapping[str, ObjectDef]:
        return self.get(org_id).objects

    def faults_for(self, org_id: str) -> OrgFaults:
        return self.get(org_id).faults

    def readonly_fields_for(self, org_id: str, user_id: str) -> frozenset[str]:
        """``Object.Field`` names the user may not write (field-level security)."""
        user = self.get(org_id).user(user_id)
        return user.readonly_fields if user is not None else frozenset()

    def metadata_records(self, org_id: str, object_name: str) -> Sequence[Mapping[str, JsonValue]]:
        """The records of one custom metadata type (none for any other object)."""
        return self.get(org_id).metadata_records.get(object_name, ())

    def on_schema_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(org_id)`` after every change to an org's objects."""
        self._listeners.append(listener)

    # Changes ---------------------------------------------------------------------------------

    def ensure(self, spec: OrgSpec) -> Org:
        """The org named by ``spec.alias``, created from the spec when it does not exist yet.

        An existing org is left as it is: the seed creates, the admin API changes.
        """
        with self._lock:
            existing = self.find(spec.alias)
            org = existing if existing is not None else self.create(spec)
            if spec.default:
                self._default_alias = spec.alias
            return org

    def create(self, spec: OrgSpec) -> Org:
        with self._lock:
            if self.find(spec.alias) is not None:
                msg = f"org {spec.alias!r} exists"
                raise OrgError(msg)
            state = OrgState(
                org_id=derived_id("00D", "org", spec.alias),
                alias=spec.alias,
                name=spec.name or spec.alias,
                edition=spec.edition,
                licenses=spec.licenses,
            )
            org = Org(state)
            for user in spec.users:
                self._add_user(org, user)
            for client in spec.clients:
                self._add_client(org, client)
            for name, mdt in spec.metadata_types.items():
                self._define_metadata_type(org, name, mdt)
            for name, obj in spec.objects.items():
                self._define_object(org, name, obj)
            org.rebuild_objects()
            self._orgs[state.org_id] = org
            if spec.default:
                self._default_alias = spec.alias
            self._repository.save(state)
            return org

    def add_user(self, org_ref: str, spec: UserSpec) -> User:
        with self._lock:
            org = self.get(org_ref)
            user = self._add_user(org, spec)
            self._repository.save(org.state)
            return user

    def add_client(self, org_ref: str, spec: ClientSpec) -> OAuthClient:
        with self._lock:
            org = self.get(org_ref)
            client = self._add_client(org, spec)
            self._repository.save(org.state)
            return client

    def set_certificate(self, org_ref: str, client_id: str, certificate: str | None) -> OAuthClient:
        """Upload (or, with None, remove) the certificate of a connected app's JWT bearer flow."""
        with self._lock:
            org = self.get(org_ref)
            client = org.client(client_id)
            if client is None:
                msg = f"no client {client_id!r} in {org.alias}"
                raise OrgError(msg)
            try:
                _usable_certificate(certificate)
            except ValueError as exc:
                raise OrgError(str(exc)) from exc
            updated = client.model_copy(update={"certificate": certificate})
            org.state.clients = [updated if c is client else c for c in org.state.clients]
            self._repository.save(org.state)
            return updated

    def define_object(self, org_ref: str, name: str, spec: ObjectSpec) -> ObjectDef:
        """Create a custom object, or add fields / switch CDC on a standard or custom one."""
        with self._lock:
            org = self.get(org_ref)
            self._define_object(org, name, spec)
            org.rebuild_objects()
            self._repository.save(org.state)
            result = org.objects[name]
        for listener in self._listeners:
            listener(org.org_id)
        return result

    def define_metadata_type(self, org_ref: str, name: str, spec: MetadataTypeSpec) -> ObjectDef:
        """Create or replace a custom metadata type: its fields and records become exactly ``spec``'s,
        as a metadata deploy of the type and its records would leave them."""
        with self._lock:
            org = self.get(org_ref)
            self._define_metadata_type(org, name, spec)
            org.rebuild_objects()
            self._repository.save(org.state)
            result = org.objects[name]
        for listener in self._listeners:
            listener(org.org_id)
        return result

    def delete_metadata_type(self, org_ref: str, name: str) -> None:
        """Delete a custom metadata type and its records. Its key prefix stays taken, as in a real org."""
        with self._lock:
            org = self.get(org_ref)
            if name not in org.state.metadata_types:
                msg = f"no custom metadata type {name!r} in {org.alias}"
                raise UnknownMetadataTypeError(msg)
            org.state.metadata_types = {k: v for k, v in org.state.metadata_types.items() if k != name}
            org.rebuild_objects()
            self._repository.save(org.state)
        for listener in self._listeners:
            listener(org.org_id)

    def delete_field(self, org_ref: str, object_name: str, field_name: str) -> ObjectDef:
        """Delete a custom field, as Setup does: it leaves describe, queries, writes and change events.

        Only custom fields defined through a spec can go; a field a formula still uses is refused
        (Salesforce refuses to delete a field referenced elsewhere). Records keep the values, so
        defining the field again brings them back, as undeleting a field in Setup does.
        """
        with self._lock:
            org = self.get(org_ref)
            current = org.state.objects.get(object_name)
            lowered = field_name.lower()
            if current is None or not any(f.name.lower() == lowered for f in current.fields):
                msg = f"{object_name} has no custom field {field_name!r}"
                raise UnknownFieldError(msg)
            kept = ObjectSpec(
                label=current.label,
                cdc_enabled=current.cdc_enabled,
                fields=tuple(f for f in current.fields if f.name.lower() != lowered),
            )
            self._replace_objects(org, object_name, {**org.state.objects, object_name: kept}, org.state.key_prefixes)
            org.rebuild_objects()
            self._repository.save(org.state)
            result = org.objects[object_name]
        for listener in self._listeners:
            listener(org.org_id)
        return result

    def _add_user(self, org: Org, spec: UserSpec) -> User:
        if self.find_user(spec.username) is not None or org.user_by_name(spec.username) is not None:
            msg = f"username {spec.username!r} is taken"
            raise OrgError(msg)
        for qualified in spec.readonly_fields:
            if qualified.count(".") != 1:
                msg = f"read-only fields are Object.Field, not {qualified!r}"
                raise OrgError(msg)
        password, token = spec.password.get_secret_value(), spec.security_token.get_secret_value()
        user = User(
            user_id=derived_id("005", "user", org.alias, spec.username.lower()),
            username=spec.username,
            email=spec.email or spec.username,
            first_name=spec.first_name,
            last_name=spec.last_name,
            password_hash=hash_password(password),
            password_with_token_hash=hash_password(password + token) if token else None,
            readonly_fields=frozenset(spec.readonly_fields),
            view_setup=spec.view_setup,
        )
        org.state.users.append(user)
        return user

    def _add_client(self, org: Org, spec: ClientSpec) -> OAuthClient:
        if self.find_client(spec.client_id) is not None:
            msg = f"client id {spec.client_id!r} is taken"
            raise OrgError(msg)
        execution_user_id = None
        if spec.execution_user is not None:
            user = org.user_by_name(spec.execution_user)
            if user is None:
                msg = f"execution user {spec.execution_user!r} is not a user of {org.alias}"
                raise OrgError(msg)
            execution_user_id = user.user_id
        client = OAuthClient(
            name=spec.name,
            client_id=spec.client_id,
            client_secret=spec.client_secret.get_secret_value(),
            redirect_uris=spec.redirect_uris,
            pkce_required=spec.pkce_required,
            require_secret=spec.require_secret,
            refresh_token_rotation=spec.refresh_token_rotation,
            scopes=spec.scopes,
            execution_user_id=execution_user_id,
            certificate=spec.certificate,
        )
        org.state.clients.append(client)
        return client

    def _define_object(self, org: Org, name: str, spec: ObjectSpec) -> None:
        standard = {o.name for o in STANDARD_OBJECTS}
        prefixes = dict(org.state.key_prefixes)
        if name.endswith("__mdt"):
            msg = f"{name} is a custom metadata type: define it under metadata_types (PUT …/metadata-types/{name})"
            raise OrgError(msg)
        if name not in standard and name not in prefixes:
            if not name.endswith("__c"):
                msg = f"no standard object {name!r}; custom objects end in __c"
                raise OrgError(msg)
            prefixes[name] = _custom_prefix(sum(1 for n in prefixes if not n.endswith("__mdt")))
        objects = {**org.state.objects, name: _merge_object(org.state.objects.get(name), spec)}
        self._replace_objects(org, name, objects, prefixes)

    def _define_metadata_type(self, org: Org, name: str, spec: MetadataTypeSpec) -> None:
        base = name[: -len("__mdt")] if name.endswith("__mdt") else ""
        if not _DEVELOPER_NAME.match(base):
            msg = f"custom metadata type names look like Region_Mapping__mdt, not {name!r}"
            raise OrgError(msg)
        prefixes = dict(org.state.key_prefixes)
        if name not in prefixes:
            prefixes[name] = _custom_prefix(sum(1 for n in prefixes if n.endswith("__mdt")), "m")
        candidate = org.state.model_copy(
            update={"metadata_types": {**org.state.metadata_types, name: spec}, "key_prefixes": prefixes}
        )
        try:
            # Build first, so a record that does not fit its type never reaches the live or persisted state.
            Org(candidate).rebuild_objects()
        except ValueError as exc:
            raise OrgError(str(exc)) from exc
        org.state.metadata_types = candidate.metadata_types
        org.state.key_prefixes = prefixes

    @staticmethod
    def _replace_objects(org: Org, name: str, objects: dict[str, ObjectSpec], prefixes: dict[str, str]) -> None:
        """Give ``org`` these object specs, once the whole org builds with them (``name`` the changed one)."""
        candidate = org.state.model_copy(update={"objects": objects, "key_prefixes": prefixes})
        try:
            # Build the whole org first, so a bad spec never reaches the live or persisted state.
            probe = Org(candidate)
            probe.rebuild_objects()
            built = probe.objects[name]
            names = tuple(f.name for f in built.fields)
            for formula_field in (f for f in built.fields if f.formula is not None):
                compile_cached(formula_field.formula or "", names)
        except ValueError as exc:  # FormulaError is a ValueError
            raise OrgError(f"{name}: {exc}") from exc
        org.state.objects = objects
        org.state.key_prefixes = prefixes

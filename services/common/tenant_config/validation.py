"""Cross-field checks of a structurally valid document: uniqueness, references between pairs,
mode-dependent keys. Each problem is a :class:`ConfigIssue` at the exact path an operator edits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.soql_filter import FilterError, parse_where
from services.common.tenant_config.api_versions import known_api_versions
from services.common.tenant_config.model import (
    AuthMode,
    DeletePolicy,
    Direction,
    FieldMapping,
    FieldType,
    ObjectPair,
    RecordFilter,
    SalesforceAuth,
    TenantConfig,
    Transform,
)

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


def config_warnings(config: TenantConfig) -> list[ConfigIssue]:
    """What is valid but worth an operator's attention: nothing here stops a document being applied."""
    warnings = []
    version = config.spec.salesforce.api_version
    known = known_api_versions()
    if known.is_newer_than_known(version):
        # Salesforce ships three releases a year and an org may be pinned to one Duplex has not
        # listed yet; refusing it would leave that team unable to configure its tenant at all.
        warnings.append(
            ConfigIssue(
                ("spec", "salesforce", "apiVersion"),
                f"{version} is newer than the latest Salesforce API version Duplex knows "
                f"({known.latest.version}, {known.latest.label}); it is used as given",
            )
        )
    return warnings


# Which modes take each mode-dependent key: (required in, allowed in). A key outside its modes is
# refused, so a document never carries a credential its mode would silently ignore.
_AUTH_KEYS: dict[str, tuple[frozenset[AuthMode], frozenset[AuthMode]]] = {
    "clientSecret": (
        frozenset({AuthMode.CLIENT_CREDENTIALS, AuthMode.PASSWORD}),
        frozenset({AuthMode.CLIENT_CREDENTIALS, AuthMode.PASSWORD, AuthMode.OAUTH_PKCE}),
    ),
    "username": (frozenset({AuthMode.PASSWORD, AuthMode.JWT_BEARER}),) * 2,
    "password": (frozenset({AuthMode.PASSWORD}),) * 2,
    "securityToken": (frozenset(), frozenset({AuthMode.PASSWORD})),
    "privateKey": (frozenset({AuthMode.JWT_BEARER}),) * 2,
    "scopes": (frozenset(), frozenset({AuthMode.OAUTH_PKCE})),
}
# Why a key is refused where the generic "only allowed when" would not say enough.
_REFUSED_BECAUSE = {
    ("clientSecret", AuthMode.JWT_BEARER): "not used when mode is jwt_bearer: the assertion signed with privateKey"
    " authenticates the connected app, and no client secret is sent",
    ("scopes", AuthMode.JWT_BEARER): "not used when mode is jwt_bearer: the token carries the scopes the connected"
    " app grants; only oauth_pkce asks for scopes",
}


def _modes(modes: frozenset[AuthMode]) -> str:
    return " or ".join(m.value for m in AuthMode if m in modes)


def _auth_issues(auth: SalesforceAuth, at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    given = {
        "clientSecret": auth.client_secret,
        "username": auth.username,
        "password": auth.password,
        "securityToken": auth.security_token,
        "privateKey": auth.private_key,
        "scopes": auth.scopes,
    }
    for key, value in given.items():
        required, allowed = _AUTH_KEYS[key]
        if value is None and auth.mode in required:
            issues.append(ConfigIssue((*at, key), f"required when mode is {auth.mode}"))
        elif value is not None and auth.mode not in allowed:
            rule = _REFUSED_BECAUSE.get((key, auth.mode))
            if rule is None:
                rule = f"only allowed when mode is {_modes(allowed)} (mode is {auth.mode})"
            issues.append(ConfigIssue((*at, key), rule))
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
    issues += [
        ConfigIssue((*at, "ignoredFields", k), f"'{name}' is mapped by this pair; it cannot also be ignored")
        for k, name in enumerate(pair.ignored_fields)
        if pair.field_by_app(name) is not None
    ]
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
    if field.classify is not None:
        issues += _classify_issues(field, direction, (*at, "classify"))
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


def _classify_issues(field: FieldMapping, direction: Direction, at: IssuePath) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if direction is not Direction.CRM_TO_APP:
        issues.append(
            ConfigIssue(
                at, f"typed filters write the app field only: the direction must be crm_to_app (is {direction})"
            )
        )
    if field.transform is not None and field.transform.type not in (FieldType.STRING, FieldType.PICKLIST):
        issues.append(
            ConfigIssue((*at[:-1], "transform", "type"), "must be string or picklist for a field with typed filters")
        )
    for k, case in enumerate(field.classify or ()):
        try:
            parse_where(case.soql)
        except FilterError as error:
            issues += [ConfigIssue((*at, k, "soql"), str(problem)) for problem in error.problems]
    return issues


def _filter_issues(pair: ObjectPair, record_filter: RecordFilter, at: IssuePath) -> list[ConfigIssue]:
    issues = []
    if record_filter.soql is not None:
        # Its fields are checked against describe when the document is applied (the admin API).
        try:
            parse_where(record_filter.soql)
        except FilterError as error:
            issues += [ConfigIssue((*at, "soql"), str(problem)) for problem in error.problems]
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

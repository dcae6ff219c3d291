"""Declarative tenant configuration: one ``Tenant`` document per connected Salesforce org.

Operators write YAML (camelCase keys, several documents per file); Python sees frozen, snake_case
models (:mod:`.model`). Validation runs in two passes so every problem can be reported with its
exact path at once:

1. structural (pydantic, :mod:`.model`): types, enums, names, unknown keys, secrets-by-reference only;
2. cross-field (:func:`semantic_issues`, :mod:`.validation`): uniqueness, references between pairs,
   mode-dependent keys.

What is valid but worth an operator's attention (an ``apiVersion`` newer than Duplex's list of
Salesforce releases, :mod:`.api_versions`) comes from :func:`config_warnings` and never stops a document.

Always go through :func:`parse_tenant_config` (or :func:`parse_config_sources` for files, both in
:mod:`.loading`) rather than ``TenantConfig.model_validate``, which runs only the first pass.

Admin stores each applied document as a numbered version (``config_versions``) in its canonical
form; services read the current one with :func:`load_current` (:mod:`.storage`).
"""

from services.common.tenant_config.api_versions import ApiRelease, ApiVersions, known_api_versions
from services.common.tenant_config.loading import (
    ConfigFileError,
    ConfigInvalidError,
    LoadedDocument,
    parse_config_file,
    parse_config_sources,
    parse_tenant_config,
)
from services.common.tenant_config.model import (
    RECONCILE_EVERY,
    AuthMode,
    BackfillIngestion,
    Classification,
    ConflictPolicy,
    DeletePolicy,
    Direction,
    FieldMapping,
    FieldType,
    ObjectPair,
    OnUnresolved,
    RecordFilter,
    SalesforceSpec,
    Schedule,
    SecretRef,
    SecretValue,
    TenantConfig,
)
from services.common.tenant_config.storage import (
    QueryConnection,
    StoredConfig,
    TenantNotFoundError,
    canonical_json,
    config_sha256,
    fetch_config,
    load_current,
    to_document,
)
from services.common.tenant_config.validation import ConfigIssue, config_warnings, semantic_issues

__all__ = [
    "RECONCILE_EVERY",
    "ApiRelease",
    "ApiVersions",
    "AuthMode",
    "BackfillIngestion",
    "Classification",
    "ConfigFileError",
    "ConfigInvalidError",
    "ConfigIssue",
    "ConflictPolicy",
    "DeletePolicy",
    "Direction",
    "FieldMapping",
    "FieldType",
    "LoadedDocument",
    "ObjectPair",
    "OnUnresolved",
    "QueryConnection",
    "RecordFilter",
    "SalesforceSpec",
    "Schedule",
    "SecretRef",
    "SecretValue",
    "StoredConfig",
    "TenantConfig",
    "TenantNotFoundError",
    "canonical_json",
    "config_sha256",
    "config_warnings",
    "fetch_config",
    "known_api_versions",
    "load_current",
    "parse_config_file",
    "parse_config_sources",
    "parse_tenant_config",
    "semantic_issues",
    "to_document",
]

"""Tenant configuration: structural and cross-field validation, error paths, files, canonical form."""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.tenant_config import (
    ApiRelease,
    AuthMode,
    BackfillIngestion,
    ConfigFileError,
    ConfigInvalidError,
    ConflictPolicy,
    DeletePolicy,
    Direction,
    FieldType,
    OnUnresolved,
    TenantConfig,
    canonical_json,
    config_sha256,
    config_warnings,
    known_api_versions,
    parse_config_file,
    parse_config_sources,
    parse_tenant_config,
    to_document,
)
from services.common.tenant_config.api_versions import parse_api_versions

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml"
DELETE = object()


def base_doc() -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {
            "salesforce": {
                "instanceUrl": "https://acme.my.salesforce.com",
                "auth": {
                    "mode": "client_credentials",
                    "clientId": "3MVG9abc",
                    "clientSecret": {"secretRef": {"env": "ACME_SF_SECRET"}},
                },
                "dailyApiCap": 5000,
            },
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners"},
                    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                    "fields": [
                        {"app": "name", "salesforce": "Name"},
                        {
                            "app": "tier",
                            "salesforce": "Tier__c",
                            "transform": {"type": "picklist", "valueMap": {"gold": "Gold", "silver": "Silver"}},
                        },
                    ],
                },
                {
                    "name": "partner_contacts",
                    "app": {"object": "partner_contacts"},
                    "salesforce": {"object": "Contact", "externalIdField": "Duplex_Id__c"},
                    "fields": [
                        {"app": "email", "salesforce": "Email"},
                        {
                            "app": "partner_id",
                            "salesforce": "AccountId",
                            "transform": {"type": "reference"},
                            "reference": {"object": "partners"},
                        },
                    ],
                },
            ],
        },
    }


def _segments(path: str) -> list[str | int]:
    return [int(s[1:-1]) if s.startswith("[") else s for s in re.findall(r"\[\d+\]|[^.\[\]]+", path)]


def edited(edits: dict[str, Any]) -> dict[str, Any]:
    """base_doc() with ``{"a.b[0].c": value}`` edits applied (DELETE removes the key)."""
    doc = base_doc()
    for path, value in edits.items():
        *parents, last = _segments(path)
        node: Any = doc
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return doc


def issues_of(doc: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigInvalidError) as caught:
        parse_tenant_config(doc)
    return [(i.where, i.message) for i in caught.value.issues]


# ---------------------------------------------------------------------------------------------
# Valid documents


def test_base_document_is_valid_and_fills_defaults() -> None:
    config = parse_tenant_config(base_doc())
    assert config.tenant_id == "acme"
    assert config.spec.salesforce.api_version == known_api_versions().latest.version
    assert config.spec.salesforce.call_options_client == "duplex"
    assert config.spec.sync.cdc is True
    assert config.spec.sync.poll_interval_seconds == 30
    assert config.spec.sync.backfill.ingestion is BackfillIngestion.AUTOMATIC
    partners = config.spec.objects[0]
    assert partners.direction is Direction.BOTH
    assert partners.delete_policy is DeletePolicy.PROPAGATE
    assert partners.app.id_field == "id"
    assert partners.fields[0].allow_nulls is False
    assert partners.conflict_policy_of(partners.fields[0]) is ConflictPolicy.NEWEST_WINS


VALID_EDITS = [
    pytest.param({"spec.salesforce.apiVersion": 57.0}, id="api-version-as-yaml-float"),
    pytest.param({"spec.salesforce.apiVersion": 60}, id="api-version-as-int"),
    pytest.param({"spec.salesforce.apiVersion": "62.0"}, id="api-version-string"),
    pytest.param({"spec.salesforce.apiVersion": "31.0"}, id="api-version-oldest-served"),
    pytest.param({"spec.salesforce.apiVersion": "68.0"}, id="api-version-winter-27"),
    pytest.param({"spec.salesforce.apiVersion": 95.0}, id="api-version-newer-than-known-is-a-warning"),
    pytest.param({"spec.salesforce.instanceUrl": "http://localhost"}, id="http-localhost-for-emulator"),
    pytest.param({"spec.salesforce.instanceUrl": "http://127.0.0.1/"}, id="http-loopback-trailing-slash"),
    pytest.param({"spec.salesforce.loginUrl": "https://test.salesforce.com"}, id="login-url"),
    pytest.param(
        {"spec.salesforce.auth": {"mode": "oauth_pkce", "clientId": "x", "scopes": ["api"]}},
        id="pkce-without-secret",
    ),
    pytest.param(
        {
            "spec.salesforce.auth": {
                "mode": "password",
                "clientId": "x",
                "clientSecret": {"secretRef": {"name": "acme-sf", "key": "client-secret"}},
                "username": "integration@acme.example",
                "password": {"secretRef": {"name": "acme-sf", "key": "password"}},
                "securityToken": {"secretRef": {"env": "ACME_SF_TOKEN"}},
            }
        },
        id="password-mode-with-k8s-secrets",
    ),
    pytest.param(
        {
            "spec.salesforce.auth": {
                "mode": "jwt_bearer",
                "clientId": "x",
                "username": "integration@acme.example",
                "privateKey": {"secretRef": {"env": "DUPLEX_SECRET_ACME_SF_KEY"}},
            }
        },
        id="jwt-bearer",
    ),
    pytest.param({"spec.objects": []}, id="tenant-without-objects"),
    pytest.param({"spec.objects[0].fields[1].direction": "app_to_crm"}, id="value-map-one-way"),
    pytest.param(
        {
            "spec.objects[0].fields[1].direction": "app_to_crm",
            "spec.objects[0].fields[1].transform.valueMap": {"gold": "Gold", "platinum": "Gold"},
        },
        id="many-to-one-value-map-when-only-app-to-crm",
    ),
    pytest.param({"spec.objects[0].fields[0].salesforce": "Id", "spec.objects[0].fields[0].direction": "crm_to_app"}),
    pytest.param({"spec.objects[0].direction": "crm_to_app", "spec.objects[0].fields[0].salesforce": "SystemModstamp"}),
    pytest.param(
        {
            "spec.objects[0].deletePolicy": "soft_delete",
            "spec.objects[0].direction": "crm_to_app",
            "spec.objects[0].softDeleteField": {"app": "archived"},
        },
        id="soft-delete-one-way-needs-one-side",
    ),
    pytest.param(
        {
            "spec.objects[0].filter": {
                "app": [{"field": "tier", "in": ["gold", "silver"]}],
                "salesforce": [{"field": "name", "notNull": True}, {"field": "Tier__c", "equals": "Gold"}],
            }
        },
        id="filter-on-mapped-fields-salesforce-case-insensitive",
    ),
    pytest.param(
        {"spec.objects[0].fields[0].reference": {"object": "partners", "onUnresolved": "omit"}},
        id="self-reference-without-transform",
    ),
    pytest.param({"spec.objects[0].fields[1].transform.valueMap": {"1": "Gold", "2": "Silver"}}),
    pytest.param({"spec.objects[0].fields[1].transform.valueMap": {1: "Gold", 2: "Silver"}}, id="numeric-codes"),
]


@pytest.mark.parametrize("edits", VALID_EDITS)
def test_valid_variants(edits: dict[str, Any]) -> None:
    parse_tenant_config(edited(edits))


ENUM_FIELDS = [
    (ConflictPolicy, "spec.objects[0].fields[0].conflictPolicy"),
    (Direction, "spec.objects[0].fields[0].direction"),
    (Direction, "spec.objects[0].direction"),
    (DeletePolicy, "spec.objects[1].deletePolicy"),
    (OnUnresolved, "spec.objects[1].fields[1].reference.onUnresolved"),
    (BackfillIngestion, "spec.sync.backfill.ingestion"),
]


def _enum_edits(path: str, value: str) -> dict[str, Any]:
    edits: dict[str, Any] = {"spec.sync": {"backfill": {}}} if path.startswith("spec.sync") else {}
    edits[path] = value
    if value == DeletePolicy.SOFT_DELETE:
        edits["spec.objects[1].softDeleteField"] = {"app": "gone", "salesforce": "Gone__c"}
    return edits


@pytest.mark.parametrize(("enum", "path"), ENUM_FIELDS)
def test_every_enum_value_is_accepted_and_anything_else_is_named(enum: type[StrEnum], path: str) -> None:
    for value in enum:
        parse_tenant_config(edited(_enum_edits(path, value.value)))
    allowed = ", ".join(v.value for v in enum)
    assert issues_of(edited(_enum_edits(path, "nope"))) == [(path, f"must be one of {allowed} (got 'nope')")]


def test_conflict_policies_and_directions_are_exactly_the_documented_ones() -> None:
    assert [p.value for p in ConflictPolicy] == [
        "app_wins",
        "crm_wins",
        "newest_wins",
        "app_unless_blank",
        "crm_unless_blank",
    ]
    assert [d.value for d in Direction] == ["both", "app_to_crm", "crm_to_app"]
    assert [a.value for a in AuthMode] == ["oauth_pkce", "client_credentials", "password", "jwt_bearer"]
    assert [a.value for a in AuthMode if a.server_side] == ["client_credentials", "password", "jwt_bearer"]
    assert {t.value for t in FieldType} == {
        "string",
        "int",
        "decimal",
        "double",
        "bool",
        "date",
        "datetime",
        "reference",
        "picklist",
        "multipicklist",
    }


@pytest.mark.parametrize(
    ("direction", "to_crm", "to_app"),
    [(Direction.BOTH, True, True), (Direction.APP_TO_CRM, True, False), (Direction.CRM_TO_APP, False, True)],
)
def test_direction_flows(direction: Direction, to_crm: bool, to_app: bool) -> None:
    assert (direction.to_crm, direction.to_app) == (to_crm, to_app)


def test_field_defaults_come_from_the_pair() -> None:
    config = parse_tenant_config(
        edited(
            {
                "spec.objects[0].direction": "app_to_crm",
                "spec.objects[0].conflictPolicy": "crm_wins",
                "spec.objects[0].fields[1].direction": "both",
                "spec.objects[0].fields[1].conflictPolicy": "app_unless_blank",
            }
        )
    )
    pair = config.spec.objects[0]
    name, tier = pair.fields
    assert (pair.direction_of(name), pair.direction_of(tier)) == (Direction.APP_TO_CRM, Direction.BOTH)
    assert pair.conflict_policy_of(name) is ConflictPolicy.CRM_WINS
    assert pair.conflict_policy_of(tier) is ConflictPolicy.APP_UNLESS_BLANK
    assert pair.field_by_salesforce("tier__C") is tier
    assert pair.field_by_app("name") is name
    assert config.object_pair("partner_contacts") is config.spec.objects[1]
    assert config.object_pair("nope") is None


def test_models_are_frozen() -> None:
    config = parse_tenant_config(base_doc())
    with pytest.raises(ValidationError):
        config.spec.salesforce.daily_api_cap = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Invalid documents: every problem, with its exact path


@dataclass(frozen=True)
class Bad:
    id: str
    edits: dict[str, Any]
    # (path, fragment of the message) for every issue, in order.
    expected: list[tuple[str, str]] = field(default_factory=list)


INVALID = [
    # --- envelope
    Bad("api-version", {"apiVersion": "duplex.dev/v2"}, [("apiVersion", "must be one of duplex.dev/v1 (got")]),
    Bad("kind", {"kind": "Mapping"}, [("kind", "must be one of Tenant (got 'Mapping')")]),
    Bad("no-metadata-name", {"metadata": {}}, [("metadata.name", "required")]),
    Bad("uppercase-tenant", {"metadata.name": "Acme"}, [("metadata.name", "lowercase DNS label")]),
    Bad("tenant-leading-dash", {"metadata.name": "-acme"}, [("metadata.name", "lowercase DNS label")]),
    Bad("tenant-too-long", {"metadata.name": "a" * 64}, [("metadata.name", "at most 63 characters")]),
    Bad("unknown-top-key", {"specs": {}}, [("specs", "unknown field (did you mean spec?")]),
    Bad("spec-missing", {"spec": DELETE}, [("spec", "required")]),
    Bad("salesforce-not-mapping", {"spec.salesforce": "acme"}, [("spec.salesforce", "must be a mapping")]),
    # --- salesforce connection
    Bad(
        "http-remote",
        {"spec.salesforce.instanceUrl": "http://acme.my.salesforce.com"},
        [("spec.salesforce.instanceUrl", "must be an https:// URL")],
    ),
    Bad(
        "url-with-path",
        {"spec.salesforce.instanceUrl": "https://acme.my.salesforce.com/services"},
        [("spec.salesforce.instanceUrl", "bare origin")],
    ),
    Bad(
        "url-with-credentials",
        {"spec.salesforce.loginUrl": "https://user:pw@login.salesforce.com"},
        [("spec.salesforce.loginUrl", "must not contain credentials")],
    ),
    Bad("url-ftp", {"spec.salesforce.instanceUrl": "ftp://x"}, [("spec.salesforce.instanceUrl", "https://")]),
    Bad(
        "api-retired",
        {"spec.salesforce.apiVersion": "30.0"},
        [("spec.salesforce.apiVersion", "Salesforce retired API version 30.0 and answers it with 410 GONE; use 31.0")],
    ),
    Bad("api-retired-float", {"spec.salesforce.apiVersion": 21.0}, [("spec.salesforce.apiVersion", "(got 21.0)")]),
    Bad("api-long-gone", {"spec.salesforce.apiVersion": "7.0"}, [("spec.salesforce.apiVersion", "retired API")]),
    Bad("api-minor", {"spec.salesforce.apiVersion": "62.5"}, [("spec.salesforce.apiVersion", "such as 6")]),
    Bad("api-prefixed", {"spec.salesforce.apiVersion": "v62.0"}, [("spec.salesforce.apiVersion", "(got 'v62.0')")]),
    Bad("cap-zero", {"spec.salesforce.dailyApiCap": 0}, [("spec.salesforce.dailyApiCap", "greater than 0")]),
    Bad("cap-missing", {"spec.salesforce.dailyApiCap": DELETE}, [("spec.salesforce.dailyApiCap", "required")]),
    Bad(
        "cap-text",
        {"spec.salesforce.dailyApiCap": "lots"},
        [("spec.salesforce.dailyApiCap", "must be a whole number (got 'lots')")],
    ),
    Bad(
        "call-options-client",
        {"spec.salesforce.callOptionsClient": "duplex acme"},
        [("spec.salesforce.callOptionsClient", "1-64 characters")],
    ),
    Bad(
        "poll-too-fast",
        {"spec.sync": {"pollIntervalSeconds": 1}},
        [("spec.sync.pollIntervalSeconds", "must be greater than or equal to 5 (got 1)")],
    ),
    Bad("cdc-not-bool", {"spec.sync": {"cdc": "sometimes"}}, [("spec.sync.cdc", "must be true or false")]),
    # --- auth
    Bad(
        "auth-mode",
        {"spec.salesforce.auth.mode": "jwt"},
        [
            (
                "spec.salesforce.auth.mode",
                "must be one of oauth_pkce, client_credentials, password, jwt_bearer (got 'jwt')",
            )
        ],
    ),
    Bad(
        "client-credentials-needs-secret",
        {"spec.salesforce.auth.clientSecret": DELETE},
        [("spec.salesforce.auth.clientSecret", "required when mode is client_credentials")],
    ),
    Bad(
        "password-mode-needs-user-and-password",
        {"spec.salesforce.auth.mode": "password"},
        [
            ("spec.salesforce.auth.username", "required when mode is password"),
            ("spec.salesforce.auth.password", "required when mode is password"),
        ],
    ),
    Bad(
        "username-outside-password-mode",
        {"spec.salesforce.auth.username": "me@acme.example"},
        [
            (
                "spec.salesforce.auth.username",
                "only allowed when mode is password or jwt_bearer (mode is client_credentials)",
            )
        ],
    ),
    Bad(
        "jwt-bearer-needs-user-and-key",
        {"spec.salesforce.auth": {"mode": "jwt_bearer", "clientId": "x"}},
        [
            ("spec.salesforce.auth.username", "required when mode is jwt_bearer"),
            ("spec.salesforce.auth.privateKey", "required when mode is jwt_bearer"),
        ],
    ),
    Bad(
        "jwt-bearer-takes-no-client-secret-scopes-or-password",
        {
            "spec.salesforce.auth.mode": "jwt_bearer",
            "spec.salesforce.auth.username": "integration@acme.example",
            "spec.salesforce.auth.privateKey": {"secretRef": {"env": "K"}},
            "spec.salesforce.auth.password": {"secretRef": {"env": "P"}},
            "spec.salesforce.auth.scopes": ["api"],
        },
        [
            (
                "spec.salesforce.auth.clientSecret",
                "not used when mode is jwt_bearer: the assertion signed with privateKey authenticates the"
                " connected app, and no client secret is sent",
            ),
            ("spec.salesforce.auth.password", "only allowed when mode is password (mode is jwt_bearer)"),
            (
                "spec.salesforce.auth.scopes",
                "not used when mode is jwt_bearer: the token carries the scopes the connected app grants;"
                " only oauth_pkce asks for scopes",
            ),
        ],
    ),
    Bad(
        "private-key-outside-jwt-bearer",
        {"spec.salesforce.auth.privateKey": {"secretRef": {"env": "K"}}},
        [("spec.salesforce.auth.privateKey", "only allowed when mode is jwt_bearer (mode is client_credentials)")],
    ),
    Bad(
        "private-key-inline",
        {
            "spec.salesforce.auth": {
                "mode": "jwt_bearer",
                "clientId": "x",
                "username": "u@acme.example",
                "privateKey": "-----BEGIN PRIVATE KEY-----",
            }
        },
        [("spec.salesforce.auth.privateKey", "inline secret values are not allowed")],
    ),
    Bad(
        "scopes-outside-pkce",
        {"spec.salesforce.auth.scopes": ["api"]},
        [("spec.salesforce.auth.scopes", "only allowed when mode is oauth_pkce")],
    ),
    Bad(
        "secret-ref-both-sources",
        {"spec.salesforce.auth.clientSecret.secretRef": {"env": "X", "name": "y", "key": "z"}},
        [("spec.salesforce.auth.clientSecret.secretRef", "give either env, or both name and key")],
    ),
    Bad(
        "secret-ref-name-without-key",
        {"spec.salesforce.auth.clientSecret.secretRef": {"name": "y"}},
        [("spec.salesforce.auth.clientSecret.secretRef", "give either env, or both name and key")],
    ),
    Bad(
        "secret-ref-bad-env-name",
        {"spec.salesforce.auth.clientSecret.secretRef": {"env": "ACME-SECRET"}},
        [("spec.salesforce.auth.clientSecret.secretRef.env", "environment variable name")],
    ),
    # --- object pairs
    Bad(
        "duplicate-pair-name",
        {"spec.objects[1].name": "partners", "spec.objects[1].fields[1].reference.object": "partners"},
        [("spec.objects[1].name", "duplicate object pair name 'partners' (also at spec.objects[0].name)")],
    ),
    Bad("pair-name-format", {"spec.objects[0].name": "Partners"}, [("spec.objects[0].name", "lowercase letter")]),
    Bad(
        "external-id-missing",
        {"spec.objects[0].salesforce.externalIdField": DELETE},
        [("spec.objects[0].salesforce.externalIdField", "required")],
    ),
    Bad(
        "external-id-is-record-id",
        {"spec.objects[0].salesforce.externalIdField": "Id"},
        [("spec.objects[0].salesforce.externalIdField", "not the record Id")],
    ),
    Bad("no-fields", {"spec.objects[0].fields": []}, [("spec.objects[0].fields", "at least 1 item")]),
    Bad("objects-not-list", {"spec.objects": {"name": "x"}}, [("spec.objects", "must be a list")]),
    Bad(
        "pair-unknown-key",
        {"spec.objects[0].deletepolicy": "ignore"},
        [("spec.objects[0].deletepolicy", "did you mean deletePolicy?")],
    ),
    # --- fields
    Bad(
        "conflict-policy-typo",
        {"spec.objects[0].fields[1].conflictPolicy": "app-wins"},
        [
            (
                "spec.objects[0].fields[1].conflictPolicy",
                "must be one of app_wins, crm_wins, newest_wins, app_unless_blank, crm_unless_blank (got 'app-wins')",
            )
        ],
    ),
    Bad(
        "field-key-typo",
        {"spec.objects[0].fields[0].conflictPolcy": "app_wins"},
        [("spec.objects[0].fields[0].conflictPolcy", "unknown field (did you mean conflictPolicy? allowed: ")],
    ),
    Bad(
        "app-field-name",
        {"spec.objects[0].fields[0].app": "first-name"},
        [
            (
                "spec.objects[0].fields[0].app",
                "identifier (letters, digits and '_', not starting with a digit) (got 'first-name')",
            )
        ],
    ),
    Bad(
        "sf-field-name",
        {"spec.objects[0].fields[0].salesforce": "Name!"},
        [
            (
                "spec.objects[0].fields[0].salesforce",
                "must be a Salesforce API name (letters, digits and '_', starting with a letter) (got 'Name!')",
            )
        ],
    ),
    Bad(
        "allow-nulls-not-bool",
        {"spec.objects[0].fields[0].allowNulls": "maybe"},
        [("spec.objects[0].fields[0].allowNulls", "must be true or false (got 'maybe')")],
    ),
    Bad(
        "duplicate-app-field",
        {"spec.objects[0].fields[1].app": "name"},
        [("spec.objects[0].fields[1].app", "duplicate app field 'name' (also at spec.objects[0].fields[0].app)")],
    ),
    Bad(
        "duplicate-sf-field-any-case",
        {"spec.objects[0].fields[1].salesforce": "NAME", "spec.objects[0].fields[1].transform": DELETE},
        [("spec.objects[0].fields[1].salesforce", "duplicate Salesforce field 'name'")],
    ),
    Bad(
        "maps-external-id",
        {"spec.objects[0].fields[0].salesforce": "duplex_id__c"},
        [("spec.objects[0].fields[0].salesforce", "externalIdField; Duplex writes it itself")],
    ),
    Bad(
        "read-only-field-default-direction",
        {"spec.objects[0].fields[0].salesforce": "SystemModstamp"},
        [("spec.objects[0].fields[0].salesforce", "read-only, so the direction must be crm_to_app (is both)")],
    ),
    Bad(
        "read-only-field-explicit-direction",
        {"spec.objects[0].fields[0].salesforce": "CreatedDate", "spec.objects[0].fields[0].direction": "app_to_crm"},
        [("spec.objects[0].fields[0].direction", "read-only")],
    ),
    Bad(
        "conflict-policy-on-one-way-field",
        {"spec.objects[0].fields[0].direction": "crm_to_app", "spec.objects[0].fields[0].conflictPolicy": "app_wins"},
        [("spec.objects[0].fields[0].conflictPolicy", "only applies to fields that sync in both directions")],
    ),
    Bad(
        "conflict-policy-on-field-of-one-way-pair",
        {"spec.objects[0].direction": "app_to_crm", "spec.objects[0].fields[0].conflictPolicy": "crm_wins"},
        [("spec.objects[0].fields[0].conflictPolicy", "(direction is app_to_crm)")],
    ),
    # --- transforms
    Bad(
        "transform-type",
        {"spec.objects[0].fields[0].transform": {"type": "text"}},
        [("spec.objects[0].fields[0].transform.type", "must be one of string, int, decimal")],
    ),
    Bad(
        "value-map-on-string",
        {"spec.objects[0].fields[0].transform": {"type": "string", "valueMap": {"a": "A"}}},
        [("spec.objects[0].fields[0].transform.valueMap", "only applies to picklist and multipicklist")],
    ),
    Bad(
        "value-map-not-reversible",
        {"spec.objects[0].fields[1].transform.valueMap": {"gold": "Gold", "silver": "Silver", "platinum": "Gold"}},
        [
            (
                "spec.objects[0].fields[1].transform.valueMap.platinum",
                "Salesforce value 'Gold' is also mapped from 'gold'",
            )
        ],
    ),
    Bad(
        "multipicklist-semicolon",
        {"spec.objects[0].fields[1].transform": {"type": "multipicklist", "valueMap": {"a;b": "A"}}},
        [("spec.objects[0].fields[1].transform.valueMap.a;b", "cannot contain ';'")],
    ),
    Bad(
        "value-map-empty-value",
        {"spec.objects[0].fields[1].transform.valueMap": {"gold": ""}},
        [("spec.objects[0].fields[1].transform.valueMap.gold", "at least 1 character")],
    ),
    Bad(
        "max-length-on-int",
        {"spec.objects[0].fields[0].transform": {"type": "int", "maxLength": 10}},
        [("spec.objects[0].fields[0].transform.maxLength", "only applies to string, picklist and multipicklist")],
    ),
    Bad(
        "max-length-zero",
        {"spec.objects[0].fields[0].transform": {"type": "string", "maxLength": 0}},
        [("spec.objects[0].fields[0].transform.maxLength", "greater than 0")],
    ),
    # --- references
    Bad(
        "reference-target-missing",
        {"spec.objects[1].fields[1].reference.object": "accounts"},
        [("spec.objects[1].fields[1].reference.object", "no object pair named 'accounts'")],
    ),
    Bad(
        "reference-type-without-reference",
        {"spec.objects[1].fields[1].reference": DELETE},
        [("spec.objects[1].fields[1].reference", "required when transform.type is reference")],
    ),
    Bad(
        "reference-with-other-type",
        {"spec.objects[1].fields[1].transform.type": "string"},
        [("spec.objects[1].fields[1].transform.type", "must be reference when the field has a reference")],
    ),
    Bad(
        "on-unresolved",
        {"spec.objects[1].fields[1].reference.onUnresolved": "wait"},
        [("spec.objects[1].fields[1].reference.onUnresolved", "must be one of hold, omit, reject (got 'wait')")],
    ),
    # --- deletes
    Bad(
        "soft-delete-without-field",
        {"spec.objects[0].deletePolicy": "soft_delete"},
        [("spec.objects[0].softDeleteField", "required when deletePolicy is soft_delete")],
    ),
    Bad(
        "soft-delete-field-without-policy",
        {"spec.objects[0].softDeleteField": {"app": "archived"}},
        [("spec.objects[0].softDeleteField", "only allowed when deletePolicy is soft_delete")],
    ),
    Bad(
        "soft-delete-both-ways-needs-both-sides",
        {"spec.objects[0].deletePolicy": "soft_delete", "spec.objects[0].softDeleteField": {"app": "archived"}},
        [("spec.objects[0].softDeleteField.salesforce", "deletes flow to Salesforce (direction is both)")],
    ),
    # --- filters
    Bad(
        "filter-two-operators",
        {"spec.objects[0].filter": {"app": [{"field": "tier", "equals": "gold", "in": ["silver"]}]}},
        [("spec.objects[0].filter.app[0]", "give exactly one of equals, in, notNull")],
    ),
    Bad(
        "filter-no-operator",
        {"spec.objects[0].filter": {"salesforce": [{"field": "Name"}]}},
        [("spec.objects[0].filter.salesforce[0]", "give exactly one of equals, in, notNull")],
    ),
    Bad(
        "filter-not-null-false",
        {"spec.objects[0].filter": {"app": [{"field": "tier", "notNull": False}]}},
        [("spec.objects[0].filter.app[0]", "matches everything")],
    ),
    Bad(
        "filter-empty-in",
        {"spec.objects[0].filter": {"app": [{"field": "tier", "in": []}]}},
        [("spec.objects[0].filter.app[0].in", "at least 1 item")],
    ),
    Bad(
        "filter-unmapped-field",
        {"spec.objects[0].filter": {"salesforce": [{"field": "Type", "equals": "Partner"}]}},
        [("spec.objects[0].filter.salesforce[0].field", "'Type' is not a mapped Salesforce field")],
    ),
    # --- several problems at once, all reported
    Bad(
        "several-semantic-problems",
        {
            "spec.objects[0].fields[1].app": "name",
            "spec.objects[1].fields[1].reference.object": "accounts",
            "spec.salesforce.auth.clientSecret": DELETE,
        },
        [
            ("spec.salesforce.auth.clientSecret", "required"),
            ("spec.objects[0].fields[1].app", "duplicate app field"),
            ("spec.objects[1].fields[1].reference.object", "no object pair named"),
        ],
    ),
]


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_documents_name_the_exact_path(case: Bad) -> None:
    found = issues_of(edited(case.edits))
    assert [path for path, _ in found] == [path for path, _ in case.expected], found
    for (_, message), (_, fragment) in zip(found, case.expected, strict=True):
        assert fragment in message


def test_document_must_be_a_mapping() -> None:
    assert issues_of(["not", "a", "mapping"]) == [("", "must be a mapping")]


# ---------------------------------------------------------------------------------------------
# Secrets: by reference only, never echoed

SECRET = "s3cr3t-Value-123"

SECRET_LEAKS = [
    pytest.param({"spec.salesforce.auth.clientSecret": SECRET}, "spec.salesforce.auth.clientSecret", id="inline"),
    pytest.param(
        {"spec.salesforce.auth.clientSecret": {"value": SECRET}},
        "spec.salesforce.auth.clientSecret.value",
        id="value-key",
    ),
    pytest.param({"spec.salesforce.auth.clientSecrt": SECRET}, "spec.salesforce.auth.clientSecrt", id="misspelt-key"),
    pytest.param(
        {"spec.salesforce.auth.clientSecret.secretRef": SECRET},
        "spec.salesforce.auth.clientSecret.secretRef",
        id="ref-is-a-string",
    ),
    pytest.param(
        {
            "spec.salesforce.auth.mode": "password",
            "spec.salesforce.auth.username": "u@acme.example",
            "spec.salesforce.auth.password": SECRET,
        },
        "spec.salesforce.auth.password",
        id="inline-password",
    ),
    pytest.param({"spec.salesforce.auth.securityToken": 123456789}, "spec.salesforce.auth.securityToken", id="token"),
]


@pytest.mark.parametrize(("edits", "path"), SECRET_LEAKS)
def test_secrets_must_be_references_and_are_never_echoed(edits: dict[str, Any], path: str) -> None:
    text = _dump_yaml(edited(edits))
    with pytest.raises(ConfigFileError) as caught:
        parse_config_file("tenant.yaml", text)
    report = "\n".join(caught.value.problems)
    assert f"tenant.yaml: {path}: " in report
    assert SECRET not in report
    assert "123456789" not in report
    assert SECRET not in str(caught.value)


def test_inline_secret_message_says_how_to_reference() -> None:
    found = issues_of(edited({"spec.salesforce.auth.clientSecret": SECRET}))
    assert found == [
        (
            "spec.salesforce.auth.clientSecret",
            "inline secret values are not allowed; use {secretRef: {env: VAR}} or "
            "{secretRef: {name: SECRET, key: KEY}}",
        )
    ]


def test_stored_document_holds_only_references() -> None:
    document = to_document(parse_tenant_config(base_doc()))
    assert document["spec"]["salesforce"]["auth"]["clientSecret"] == {"secretRef": {"env": "ACME_SF_SECRET"}}


# ---------------------------------------------------------------------------------------------
# Files


def _dump_yaml(*docs: dict[str, Any]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def test_sample_file_is_valid() -> None:
    (config,) = parse_config_file(SAMPLE.name, SAMPLE.read_text())
    assert config.tenant_id == "acme"
    assert [p.name for p in config.spec.objects] == ["partners", "partner_contacts"]
    assert {p.salesforce.object for p in config.spec.objects} == {"Account", "Contact"}
    assert {p.salesforce.external_id_field for p in config.spec.objects} == {"Duplex_Id__c"}
    fields = [(p, f) for p in config.spec.objects for f in p.fields]
    assert {p.direction_of(f) for p, f in fields} == set(Direction)
    assert len({p.conflict_policy_of(f) for p, f in fields if p.direction_of(f) is Direction.BOTH}) >= 4


def test_error_lines_carry_file_and_document_only_when_several() -> None:
    broken = edited({"spec.objects[0].fields[1].conflictPolicy": "app-wins"})
    expected = (
        "spec.objects[0].fields[1].conflictPolicy: must be one of app_wins, crm_wins, newest_wins, "
        "app_unless_blank, crm_unless_blank (got 'app-wins')"
    )
    with pytest.raises(ConfigFileError) as single:
        parse_config_file("tenant.yaml", _dump_yaml(broken))
    assert single.value.problems == (f"tenant.yaml: {expected}",)

    other = edited({"metadata.name": "beta"})
    with pytest.raises(ConfigFileError) as several:
        parse_config_file("tenant.yaml", _dump_yaml(other, broken))
    assert several.value.problems == (f"tenant.yaml: document 2: {expected}",)


YAML_ERRORS = [
    pytest.param("a: b\n c: d\n", "x.yaml: line 2, column 3: invalid YAML: mapping values are not allowed here"),
    pytest.param("a: b\na: c\n", "x.yaml: line 2, column 1: invalid YAML: duplicate key 'a'"),
    pytest.param("a: [1, 2\n", "x.yaml: line 2, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    pytest.param("", "x.yaml: no documents"),
    pytest.param("# only a comment\n---\n", "x.yaml: no documents"),
    pytest.param("- a\n- b\n", "x.yaml: must be a mapping with apiVersion, kind, metadata and spec"),
]


@pytest.mark.parametrize(("text", "expected"), YAML_ERRORS)
def test_yaml_problems_give_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config_file("x.yaml", text)
    assert caught.value.problems == (expected,)


def test_duplicate_key_deep_in_a_document_is_reported_with_its_line() -> None:
    text = _dump_yaml(base_doc()).replace("    dailyApiCap: 5000\n", "    dailyApiCap: 5000\n    dailyApiCap: 9\n")
    line = text.splitlines().index("    dailyApiCap: 9") + 1
    with pytest.raises(ConfigFileError) as caught:
        parse_config_file("t.yaml", text)
    assert caught.value.problems == (f"t.yaml: line {line}, column 5: invalid YAML: duplicate key 'dailyApiCap'",)


def test_yaml_1_1_booleans_and_dates_stay_text() -> None:
    text = _dump_yaml(base_doc()).replace("gold: Gold", "no: Norway").replace("silver: Silver", "yes: 2024-01-01")
    (config,) = parse_config_file("t.yaml", text)
    value_map = config.spec.objects[0].fields[1].transform.value_map  # type: ignore[union-attr]
    assert value_map == {"no": "Norway", "yes": "2024-01-01"}


def test_one_bad_document_fails_the_whole_file() -> None:
    good = edited({"metadata.name": "beta"})
    bad = edited({"spec.salesforce.dailyApiCap": -5})
    with pytest.raises(ConfigFileError) as caught:
        parse_config_file("t.yaml", _dump_yaml(good, bad))
    assert caught.value.problems == (
        "t.yaml: document 2: spec.salesforce.dailyApiCap: must be greater than 0 (got -5)",
    )


def test_a_tenant_defined_twice_is_an_error_across_files() -> None:
    text = _dump_yaml(base_doc())
    with pytest.raises(ConfigFileError) as caught:
        parse_config_sources([("a.yaml", text), ("b.yaml", text)])
    assert caught.value.problems == (
        "b.yaml: document 1: metadata.name: tenant 'acme' is defined more than once (also a.yaml document 1)",
    )


def test_several_tenants_in_one_file() -> None:
    docs = parse_config_sources([("t.yaml", _dump_yaml(base_doc(), edited({"metadata.name": "beta"})))])
    assert [(d.source, d.index, d.config.tenant_id) for d in docs] == [("t.yaml", 1, "acme"), ("t.yaml", 2, "beta")]


# ---------------------------------------------------------------------------------------------
# Salesforce API versions: every served one is valid, retired ones are errors, unknown newer ones warnings


def test_the_versions_file_lists_every_served_release_up_to_winter_27() -> None:
    known = known_api_versions()
    assert known.oldest.version == "31.0"
    assert known.release("68.0") == ApiRelease("68.0", "Winter '27")
    assert known.release("62.0") == ApiRelease("62.0", "Winter '25")
    assert known.release("31.0") == ApiRelease("31.0", "Summer '14")
    assert known.versions[-1] == known.latest.version
    assert (known.release("30.0"), known.release("62.5"), known.is_retired("30.0"), known.is_retired("31.0")) == (
        None,
        None,
        True,
        False,
    )


def test_a_version_newer_than_the_file_is_valid_with_a_warning() -> None:
    newer = f"{known_api_versions().latest.number + 1}.0"
    config = parse_tenant_config(edited({"spec.salesforce.apiVersion": newer}))
    assert config.spec.salesforce.api_version == newer
    (warning,) = config_warnings(config)
    assert warning.where == "spec.salesforce.apiVersion"
    assert warning.message.startswith(f"{newer} is newer than the latest Salesforce API version Duplex knows")
    # Files report it with the document's place, as they do problems; known versions say nothing.
    text = _dump_yaml(edited({"metadata.name": "beta"}), edited({"spec.salesforce.apiVersion": newer}))
    docs = parse_config_sources([("t.yaml", text)])
    assert [d.warnings for d in docs] == [(), (f"t.yaml: document 2: spec.salesforce.apiVersion: {warning.message}",)]
    assert config_warnings(parse_tenant_config(edited({"spec.salesforce.apiVersion": "68.0"}))) == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"oldestServed": "31.0", "releases": [{"version": "32.0", "label": "x"}]}, id="starts-late"),
        pytest.param(
            {
                "oldestServed": "31.0",
                "releases": [{"version": "31.0", "label": "a"}, {"version": "33.0", "label": "b"}],
            },
            id="gap",
        ),
        pytest.param({"oldestServed": "31.0", "releases": [{"version": 31.0, "label": "a"}]}, id="unquoted"),
        pytest.param({"oldestServed": "31.0", "releases": []}, id="empty"),
        pytest.param({"releases": [{"version": "31.0", "label": "a"}]}, id="no-oldest"),
    ],
)
def test_a_broken_versions_file_is_refused(data: object) -> None:
    with pytest.raises(ValueError, match=r"^salesforce_api_versions\.yaml: "):
        parse_api_versions(data)


# ---------------------------------------------------------------------------------------------
# Canonical form


def test_round_trip_through_the_stored_document() -> None:
    (config,) = parse_config_file(SAMPLE.name, SAMPLE.read_text())
    again = parse_tenant_config(to_document(config))
    assert again == config
    assert canonical_json(again) == canonical_json(config)


def test_explicit_defaults_hash_like_omitted_ones() -> None:
    explicit = edited(
        {
            "spec.salesforce.apiVersion": float(known_api_versions().latest.version),
            "spec.salesforce.callOptionsClient": "duplex",
            "spec.sync": {"cdc": True, "pollIntervalSeconds": 30, "backfill": {"ingestion": "automatic"}},
            "spec.objects[0].direction": "both",
            "spec.objects[0].fields[0].allowNulls": False,
        }
    )
    assert config_sha256(parse_tenant_config(explicit)) == config_sha256(parse_tenant_config(base_doc()))


def test_any_real_change_changes_the_hash() -> None:
    base = config_sha256(parse_tenant_config(base_doc()))
    for edits in (
        {"spec.salesforce.dailyApiCap": 5001},
        {"spec.objects[0].fields[0].conflictPolicy": "app_wins"},
        {"spec.objects[0].fields[1].transform.valueMap.gold": "GOLD"},
    ):
        assert config_sha256(parse_tenant_config(edited(edits))) != base


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=10**9))
def test_key_order_never_changes_the_hash(rng: random.Random, cap: int) -> None:
    doc = edited({"spec.salesforce.dailyApiCap": cap})
    expected = config_sha256(parse_tenant_config(doc))
    assert config_sha256(parse_tenant_config(_shuffled(doc, rng))) == expected
    assert isinstance(TenantConfig.model_validate(doc), TenantConfig)


def test_an_ignored_app_field_cannot_also_be_mapped() -> None:
    doc = base_doc()
    pair = doc["spec"]["objects"][0]
    mapped = pair["fields"][0]["app"]
    pair["ignoredFields"] = ["internal_score", mapped]
    assert issues_of(doc) == [
        ("spec.objects[0].ignoredFields[1]", f"'{mapped}' is mapped by this pair; it cannot also be ignored")
    ]


def test_typed_filters_flow_to_the_app_only_and_each_clause_must_parse() -> None:
    doc = base_doc()
    pair = doc["spec"]["objects"][0]
    pair["fields"].append(
        {
            "app": "kind",
            "salesforce": "Type",
            "classify": [{"soql": "Type = 'Partner'", "value": "partner"}, {"soql": "Type = (", "value": "x"}],
        }
    )
    where = f"spec.objects[0].fields[{len(pair['fields']) - 1}].classify"
    found = issues_of(doc)
    assert (where, "typed filters write the app field only: the direction must be crm_to_app (is both)") in found
    assert any(w == f"{where}[1].soql" and m.startswith("column 8: ") for w, m in found)
    pair["fields"][-1]["direction"] = "crm_to_app"
    pair["fields"][-1]["classify"].pop()
    parse_tenant_config(doc)

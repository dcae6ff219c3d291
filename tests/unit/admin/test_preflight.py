"""The preflight checks as pure functions over plain describe, /limits and Tooling answers; and the
reads behind them over a fake reader (how many calls, where they stop)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.admin.preflight import (
    Check,
    ClientReader,
    Failure,
    FailureKind,
    NotRead,
    OrgFacts,
    ReadError,
    SignedIn,
    preflight_checks,
    read_org,
)
from services.common.connections import ConnectionUnavailableError
from services.common.salesforce import SalesforceApiError, UnlimitedBudget
from services.common.schema_refresh import change_event_name
from services.common.tenant_config import TenantConfig, parse_tenant_config
from services.common.vault import VaultError

pytestmark = pytest.mark.unit

SAMPLE = yaml.safe_load((Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml").read_text())
AUTHORIZE = "POST /api/v1/tenants/acme/connection:authorize"
LIMITS = {
    "DailyApiRequests": {"Max": 15000, "Remaining": 14990},
    "DailyBulkApiRequests": {"Max": 15000, "Remaining": 1},
}
SELECTED = ["AccountChangeEvent", "ContactChangeEvent", "CaseChangeEvent"]
# Describe's fields of the sample tenant's objects: name → (type, createable and updateable).
ACCOUNT_FIELDS = {
    "Id": ("id", False),
    "Name": ("string", True),
    "Website": ("url", True),
    "Phone": ("phone", True),
    "Description": ("textarea", True),
    "AnnualRevenue": ("currency", True),
    "NumberOfEmployees": ("int", True),
    "ParentId": ("reference", True),
    "SystemModstamp": ("datetime", False),
    "Partner_Status__c": ("picklist", True),
    "Tier__c": ("picklist", True),
    "Industries__c": ("multipicklist", True),
    "Partner_Since__c": ("date", True),
    "Archived__c": ("boolean", True),
}
CONTACT_FIELDS = {
    "Id": ("id", False),
    "FirstName": ("string", True),
    "LastName": ("string", True),
    "Email": ("email", True),
    "Phone": ("phone", True),
    "Title": ("string", True),
    "AccountId": ("reference", True),
    "HasOptedOutOfEmail": ("boolean", True),
    "Portal_User__c": ("boolean", True),
}


def config(**changes: Any) -> TenantConfig:
    """The sample tenant; ``changes`` are dotted paths (``spec.sync.cdc``) set to values."""
    document = copy.deepcopy(SAMPLE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    return parse_tenant_config(document)


def field(name: str, kind: str = "string", *, writable: bool = True, **flags: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "createable": writable,
        "updateable": writable,
        "calculated": False,
        "externalId": False,
        "unique": False,
        **flags,
    }


def describe(sobject: str, fields: Mapping[str, tuple[str, bool]], **flags: Any) -> dict[str, Any]:
    external = field("Duplex_Id__c", externalId=True, unique=True)
    listed = [field(name, kind, writable=writable) for name, (kind, writable) in fields.items()]
    return {
        "name": sobject,
        "queryable": True,
        "retrieveable": True,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "fields": [*listed, external],
        **flags,
    }


def described() -> dict[str, Any]:
    return {"Account": describe("Account", ACCOUNT_FIELDS), "Contact": describe("Contact", CONTACT_FIELDS)}


def facts(**changes: Any) -> OrgFacts:
    given: dict[str, Any] = {
        "access": SignedIn("https://acme.my.salesforce.com"),
        "limits": LIMITS,
        "describes": described(),
        "selection": SELECTED,
        "calls": 4,
    }
    return OrgFacts(**{**given, **changes})


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def with_field(sobject: str, field_name: str, **flags: Any) -> dict[str, Any]:
    """The describes, with one field of ``sobject`` changed (or, with ``gone=True``, removed)."""
    describes = described()
    fields = describes[sobject]["fields"]
    index = next(i for i, f in enumerate(fields) if f["name"] == field_name)
    if flags.pop("gone", False):
        del fields[index]
    else:
        fields[index] = {**fields[index], **flags}
    return describes


def failing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


# --- every check passing ----------------------------------------------------------------------------


def test_a_ready_org_passes_every_check_in_order() -> None:
    checks = preflight_checks(config(), facts())

    assert failing(checks) == []
    assert all(c.fix is None for c in checks)
    names = [c.name for c in checks]
    account_fields = [f"Account: field {f['salesforce']}" for f in SAMPLE["spec"]["objects"][0]["fields"]]
    contact_fields = [f"Contact: field {f['salesforce']}" for f in SAMPLE["spec"]["objects"][1]["fields"]]
    assert names == [
        "API access",
        "API limits",
        "Account: readable",
        "Account: createable and updateable",
        "Account: external id Duplex_Id__c",
        "Account: soft-delete field Archived__c",
        *account_fields,
        "Contact: readable",
        "Contact: createable, updateable and deletable",
        "Contact: external id Duplex_Id__c",
        *contact_fields,
        "Account: Change Data Capture",
        "Contact: Change Data Capture",
    ]
    checked = by_name(checks)
    assert checked["API access"].detail == (
        "signed in to https://acme.my.salesforce.com with the session the connect flow keeps in the vault"
    )
    assert checked["Account: field Tier__c"].detail == "exists (picklist); Duplex writes it: createable and updateable"
    assert checked["Account: field Id"].detail == "exists (id); Duplex only reads it"
    assert checked["Account: Change Data Capture"].detail == (
        "AccountChangeEvent is selected on the ChangeEvents channel: changes stream"
    )


def test_the_limits_check_reports_the_remaining_requests_the_cap_and_the_calls_made() -> None:
    (limits,) = [c for c in preflight_checks(config(), facts()) if c.name == "API limits"]
    assert limits.ok
    assert limits.detail == (
        "DailyApiRequests: 14,990 of 15,000 remaining in the rolling 24 hours; dailyApiCap allows Duplex 5,000 a day;"
        " this check made 4 API calls"
    )

    over = by_name(preflight_checks(config(spec__salesforce__dailyApiCap=20000), facts(calls=1)))["API limits"]
    assert over.ok
    assert "20,000 a day (more than the org's whole allocation: the org's limit comes first)" in over.detail
    assert over.detail.endswith("this check made 1 API call")


# --- API access ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        ("not_connected", f"connect it: {AUTHORIZE}"),
        ("needs_reconnect", f"reconnect it: {AUTHORIZE}"),
        ("revoked", f"reconnect it: {AUTHORIZE}"),
    ],
)
def test_a_tenant_awaiting_a_connect_fails_first_and_every_other_check_says_why(reason: str, fix: str) -> None:
    message = f"tenant acme: it is not connected to Salesforce yet; an admin connects it with {AUTHORIZE}"
    failure = Failure(FailureKind.AWAITS_CONNECT, message, reason)
    skipped = NotRead("API access", "Duplex could not sign in to the org")
    org = facts(
        access=failure, limits=skipped, describes=dict.fromkeys(["Account", "Contact"], skipped), selection=skipped
    )

    checks = preflight_checks(config(), org)

    assert checks[0] == Check("API access", False, message, fix)
    assert failing(checks) == checks
    assert {(c.detail, c.fix) for c in checks[1:]} == {
        ("not checked: Duplex could not sign in to the org", "fix 'API access' first, then check again")
    }
    assert len(checks) == len(preflight_checks(config(), facts()))


PASSWORD = {
    "mode": "password",
    "clientId": "app",
    "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_SF"}},
    "username": "integration@acme.example",
    "password": {"secretRef": {"env": "DUPLEX_SECRET_SF_PASSWORD"}},
}
JWT = {
    "mode": "jwt_bearer",
    "clientId": "app",
    "username": "integration@acme.example",
    "privateKey": {"secretRef": {"env": "DUPLEX_SECRET_SF_KEY"}},
}
CLIENT_CREDENTIALS = {"mode": "client_credentials", "clientId": "app", "clientSecret": PASSWORD["clientSecret"]}


def unavailable(reason: str, message: str, code: str | None = None) -> ConnectionUnavailableError:
    return ConnectionUnavailableError("acme", reason, message, code=code)


async def access_of(tenant: TenantConfig, error: Exception) -> Check:
    """The API access check of ``tenant`` when signing in raises ``error`` (as the client raises it)."""
    reader = ClientReader(RaisingClient(error), UnlimitedBudget())  # type: ignore[arg-type]
    org = await read_org(tenant, reader)
    checks = preflight_checks(tenant, org)
    assert failing(checks) == checks
    return checks[0]


@pytest.mark.parametrize(
    ("auth", "error", "fix"),
    [
        (
            None,
            unavailable(
                "error", "its Salesforce session refresh failed (invalid_client: bad secret)", "invalid_client"
            ),
            "check spec.salesforce.auth.clientId and clientSecret against the connected app's consumer key and secret",
        ),
        (
            None,
            unavailable("error", "its Salesforce session refresh failed (x: y)", "x"),
            "check spec.salesforce.auth.clientId and clientSecret against the connected app; if the grant is gone,"
            f" reconnect it: {AUTHORIZE}",
        ),
        (
            None,
            unavailable("vault_not_configured", "auth mode oauth_pkce keeps the tenant's tokens in the vault"),
            "set VAULT_KEYS for the admin API",
        ),
        (
            PASSWORD,
            unavailable(
                "error", "its Salesforce sign-in failed (invalid_grant: authentication failure)", "invalid_grant"
            ),
            "check the password and security token secrets of spec.salesforce.auth for integration@acme.example, and"
            " that the user is active and the connected app allows the password flow",
        ),
        (
            PASSWORD,
            unavailable(
                "error", "its Salesforce sign-in failed (secret_unavailable: X is not set)", "secret_unavailable"
            ),
            "give the admin API the variable the secretRef names (as cdc-ingest and the writer have it)",
        ),
        (
            PASSWORD,
            unavailable("error", "its Salesforce sign-in failed (policy_violation: host)", "policy_violation"),
            "name only hosts and variables the deployment allows, or widen its policy (DUPLEX_SALESFORCE_HOSTS,"
            " DUPLEX_SECRET_ENV_PREFIX)",
        ),
        (
            PASSWORD,
            unavailable("revoked", "its Salesforce connection was revoked through the admin API"),
            "once the reason for the revoke is dealt with, apply a new version of its configuration"
            " (PUT /api/v1/tenants/acme)",
        ),
        (
            JWT,
            unavailable(
                "error", "its Salesforce sign-in failed (invalid_grant: user hasn't approved)", "invalid_grant"
            ),
            "check that the connected app's certificate matches spec.salesforce.auth.privateKey and that"
            " integration@acme.example is pre-authorized for the app (profile or permission set)",
        ),
        (
            JWT,
            unavailable("error", "its Salesforce sign-in failed (invalid_private_key: not PEM)", "invalid_private_key"),
            "point spec.salesforce.auth.privateKey at the unencrypted PEM RSA key of the app's certificate",
        ),
        (
            CLIENT_CREDENTIALS,
            unavailable("error", "its Salesforce sign-in failed (invalid_grant: no user)", "invalid_grant"),
            "enable the client credentials flow in the connected app and give it a run-as user (Setup → App Manager"
            " → the app → Manage → Edit Policies)",
        ),
        (
            CLIENT_CREDENTIALS,
            VaultError("no key k1"),
            "give the admin API the VAULT_KEYS the services have (the key that sealed the tenant's tokens)",
        ),
    ],
)
async def test_sign_in_failures_say_what_to_fix(auth: dict[str, Any] | None, error: Exception, fix: str) -> None:
    tenant = config(spec__salesforce__auth=auth) if auth else config()
    check = await access_of(tenant, error)
    expected = error if isinstance(error, ConnectionUnavailableError) else "the vault cannot read"
    assert check.name == "API access"
    assert str(expected) in check.detail
    assert check.fix == fix


async def test_an_unreachable_login_host_is_named() -> None:
    check = await access_of(config(), httpx.ConnectError("[Errno 111] Connection refused"))
    assert check == Check(
        "API access",
        False,
        "Salesforce could not be reached at https://login.salesforce.com: [Errno 111] Connection refused",
        "check spec.salesforce.loginUrl and instanceUrl, and that the admin API can reach them (proxy, firewall,"
        " DUPLEX_ADMIN_SALESFORCE_CA_FILE)",
    )


@pytest.mark.parametrize(
    ("auth", "how"),
    [
        (None, "with the session the connect flow keeps in the vault"),
        (PASSWORD, "as integration@acme.example (password grant)"),
        (JWT, "as integration@acme.example (JWT bearer grant)"),
        (CLIENT_CREDENTIALS, "as the connected app's run-as user (client credentials grant)"),
    ],
)
def test_signed_in_says_how(auth: dict[str, Any] | None, how: str) -> None:
    tenant = config(spec__salesforce__auth=auth) if auth else config()
    assert preflight_checks(tenant, facts())[0] == Check(
        "API access", True, f"signed in to https://acme.my.salesforce.com {how}"
    )


# --- /limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "detail", "fix"),
    [
        (
            Failure(FailureKind.REFUSED, "TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED", 403),
            "/limits cannot be read (REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.)",
            "the org has used its daily API requests: wait for the rolling 24 hours to free some",
        ),
        (
            Failure(FailureKind.REFUSED, "API is not enabled for this Organization", "API_DISABLED_FOR_ORG", 403),
            "/limits cannot be read (API_DISABLED_FOR_ORG: API is not enabled for this Organization)",
            "the org has no API access: enable it (Professional Edition needs the API add-on)",
        ),
        (
            {"DailyBulkApiRequests": {"Max": 1, "Remaining": 1}},
            "/limits has no DailyApiRequests Max and Remaining",
            "check spec.salesforce.apiVersion and instanceUrl: they should name a Salesforce org's REST API",
        ),
    ],
)
def test_limits_that_cannot_be_read(limits: Any, detail: str, fix: str) -> None:
    assert by_name(preflight_checks(config(), facts(limits=limits)))["API limits"] == Check(
        "API limits", False, detail, fix
    )


def test_an_org_out_of_api_requests_fails_the_limits_check() -> None:
    spent = {"DailyApiRequests": {"Max": 15000, "Remaining": 0}}
    check = by_name(preflight_checks(config(), facts(limits=spent)))["API limits"]
    assert not check.ok
    assert check.detail.startswith("DailyApiRequests: 0 of 15,000 remaining")
    assert check.fix == (
        "the org has used its daily API requests: wait for the rolling 24 hours to free some, or raise the org's"
        " allocation"
    )


# --- objects ---------------------------------------------------------------------------------------


def test_an_object_that_cannot_be_described_fails_and_its_other_checks_are_not_checked() -> None:
    gone = Failure(FailureKind.REFUSED, "The requested resource does not exist", "NOT_FOUND", 404)
    checks = preflight_checks(config(), facts(describes={**described(), "Account": gone}))

    account = [c for c in checks if c.name.startswith("Account:") and "Change Data Capture" not in c.name]
    assert account[0] == Check(
        "Account: readable",
        False,
        "Account cannot be described (NOT_FOUND: The requested resource does not exist)",
        "check spec.objects[0].salesforce.object, and grant the integration user Read on Account (profile or"
        " permission set)",
    )
    assert {(c.ok, c.detail, c.fix) for c in account[1:]} == {
        (False, "not checked: Account's describe could not be read", "fix 'Account: readable' first, then check again")
    }
    assert all(c.ok for c in checks if c.name.startswith("Contact:"))


def test_an_object_the_user_cannot_query_is_not_readable() -> None:
    describes = {**described(), "Contact": describe("Contact", CONTACT_FIELDS, queryable=False)}
    check = by_name(preflight_checks(config(), facts(describes=describes)))["Contact: readable"]
    assert check == Check(
        "Contact: readable",
        False,
        "Contact is not queryable for the integration user",
        "grant the integration user Read on Contact (profile or permission set)",
    )


def test_an_object_duplex_writes_must_be_createable_updateable_and_for_propagated_deletes_deletable() -> None:
    describes = {
        "Account": describe("Account", ACCOUNT_FIELDS, updateable=False),
        "Contact": describe("Contact", CONTACT_FIELDS, createable=False, deletable=False),
    }
    checks = by_name(preflight_checks(config(), facts(describes=describes)))

    assert checks["Account: createable and updateable"] == Check(
        "Account: createable and updateable",
        False,
        "Account is not updateable for the integration user; Duplex creates and updates its records",
        "grant the integration user Edit on Account (profile or permission set), or set spec.objects[0].direction to"
        " crm_to_app",
    )
    assert checks["Contact: createable, updateable and deletable"] == Check(
        "Contact: createable, updateable and deletable",
        False,
        "Contact is not createable or deletable for the integration user; Duplex creates and updates its records,"
        " and deletes them (deletePolicy propagate)",
        "grant the integration user Create and Delete on Contact (profile or permission set), or set"
        " spec.objects[1].direction to crm_to_app",
    )


def test_an_object_duplex_only_reads_needs_no_write_rights() -> None:
    readonly = {**ACCOUNT_FIELDS, "Tier__c": ("picklist", False), "Partner_Since__c": ("date", False)}
    describes = {**described(), "Account": describe("Account", readonly, createable=False, updateable=False)}
    tenant = config(spec__objects__0__direction="crm_to_app", spec__objects__0__fields=_read_only_account_fields())

    checks = preflight_checks(tenant, facts(describes=describes))

    names = [c.name for c in checks]
    assert "Account: createable and updateable" not in names
    assert all(c.ok for c in checks if c.name.startswith("Account:")), failing(checks)


def _read_only_account_fields() -> list[dict[str, Any]]:
    fields = []
    for mapping in copy.deepcopy(SAMPLE["spec"]["objects"][0]["fields"]):
        mapping.pop("direction", None)
        mapping.pop("conflictPolicy", None)
        # Read back, two app values for one Salesforce value would be ambiguous.
        mapping.get("transform", {}).get("valueMap", {}).pop("trial", None)
        fields.append(mapping)
    return fields


@pytest.mark.parametrize(
    ("flags", "detail", "fix"),
    [
        (
            {"gone": True},
            "Account has no field Duplex_Id__c (or the integration user cannot see it)",
            "create a Text field Duplex_Id__c on Account with External ID and Unique ticked, or correct"
            " spec.objects[0].salesforce.externalIdField",
        ),
        (
            {"externalId": False},
            "Duplex_Id__c is not an External ID: Duplex cannot upsert Account records on it",
            "Setup → Object Manager → Account → Fields & Relationships → Duplex_Id__c → Edit: tick External ID",
        ),
        (
            {"unique": False},
            "Duplex_Id__c is not Unique: two Account records could carry the same Duplex id, and upserts on it would"
            " no longer find one record",
            "Setup → Object Manager → Account → Fields & Relationships → Duplex_Id__c → Edit: tick Unique (after"
            " removing duplicate values)",
        ),
        (
            {"createable": False},
            "the integration user cannot set Duplex_Id__c, which every record Duplex creates carries",
            "grant Edit on Account.Duplex_Id__c to the integration user (field-level security)",
        ),
    ],
)
def test_the_external_id_field_must_exist_be_an_external_id_unique_and_writable(
    flags: dict[str, Any], detail: str, fix: str
) -> None:
    org = facts(describes=with_field("Account", "Duplex_Id__c", **flags))
    check = by_name(preflight_checks(config(), org))["Account: external id Duplex_Id__c"]
    assert check == Check("Account: external id Duplex_Id__c", False, detail, fix)


@pytest.mark.parametrize(
    ("flags", "detail", "fix"),
    [
        (
            {"gone": True},
            "Account has no field Archived__c (or the integration user cannot see it)",
            "create a Checkbox field Archived__c on Account, or correct spec.objects[0].softDeleteField.salesforce",
        ),
        (
            {"type": "string"},
            "Archived__c is a string field; a soft delete sets a checkbox",
            "point spec.objects[0].softDeleteField.salesforce at a Checkbox field",
        ),
        (
            {"updateable": False},
            "the integration user cannot set Archived__c, which a delete coming from the app sets",
            "grant Edit on Account.Archived__c to the integration user (field-level security)",
        ),
    ],
)
def test_the_soft_delete_field_must_exist_be_a_checkbox_and_settable(
    flags: dict[str, Any], detail: str, fix: str
) -> None:
    org = facts(describes=with_field("Account", "Archived__c", **flags))
    check = by_name(preflight_checks(config(), org))["Account: soft-delete field Archived__c"]
    assert check == Check("Account: soft-delete field Archived__c", False, detail, fix)


@pytest.mark.parametrize(
    ("name", "flags", "detail", "fix"),
    [
        (
            "Tier__c",
            {"gone": True},
            "Account has no field Tier__c (or the integration user cannot see it)",
            "create Tier__c on Account (or grant the integration user Read on it), or correct"
            " spec.objects[0].fields[4].salesforce",
        ),
        (
            "Tier__c",
            {"updateable": False},
            "Tier__c exists (picklist) but is not updateable for the integration user; Duplex writes it",
            "grant Edit on Account.Tier__c to the integration user (field-level security), or set"
            " spec.objects[0].fields[4].direction to crm_to_app",
        ),
        (
            "Name",
            {"createable": False, "updateable": False, "calculated": True},
            "Name is a formula field, which no one can write",
            "set spec.objects[0].fields[0].direction to crm_to_app",
        ),
    ],
)
def test_a_mapped_field_must_exist_and_be_writable_when_duplex_writes_it(
    name: str, flags: dict[str, Any], detail: str, fix: str
) -> None:
    org = facts(describes=with_field("Account", name, **flags))
    check = by_name(preflight_checks(config(), org))[f"Account: field {name}"]
    assert check == Check(f"Account: field {name}", False, detail, fix)


def test_a_field_duplex_only_reads_may_be_read_only_and_names_compare_in_any_case() -> None:
    describes = with_field("Account", "AnnualRevenue", createable=False, updateable=False, name="annualrevenue")
    checks = by_name(preflight_checks(config(), facts(describes=describes)))
    assert checks["Account: field AnnualRevenue"] == Check(
        "Account: field AnnualRevenue", True, "exists (currency); Duplex only reads it"
    )


def test_two_pairs_on_one_object_are_told_apart_by_pair_name() -> None:
    second = copy.deepcopy(SAMPLE["spec"]["objects"][1])
    second |= {"name": "key_contacts", "app": {"object": "key_contacts", "idField": "id"}}
    tenant = config(spec__objects=[*SAMPLE["spec"]["objects"], second])
    names = [c.name for c in preflight_checks(tenant, facts())]
    assert "Contact (partner_contacts): readable" in names
    assert "Contact (key_contacts): external id Duplex_Id__c" in names
    assert "Account: readable" in names
    assert names.count("Contact: Change Data Capture") == 1


# --- Change Data Capture ---------------------------------------------------------------------------


def test_an_object_out_of_the_cdc_selection_fails_and_says_it_is_polled_meanwhile() -> None:
    checks = by_name(preflight_checks(config(), facts(selection=["ContactChangeEvent"])))
    assert checks["Account: Change Data Capture"] == Check(
        "Account: Change Data Capture",
        False,
        "AccountChangeEvent is not selected for Change Data Capture: cdc-ingest polls Account every 30 s",
        "Setup → Change Data Capture → add Account to Selected Entities (until then, and until cdc-ingest restarts,"
        " Duplex polls it every 30 s)",
    )
    assert checks["Contact: Change Data Capture"].ok


def test_a_selection_that_cannot_be_read_fails_every_streamed_object() -> None:
    hidden = Failure(
        FailureKind.REFUSED, "sObject type 'PlatformEventChannelMember' is not supported.", "INVALID_TYPE", 400
    )
    cdc = [c for c in preflight_checks(config(), facts(selection=hidden)) if "Change Data Capture" in c.name]
    assert [c.name for c in cdc] == ["Account: Change Data Capture", "Contact: Change Data Capture"]
    assert {(c.ok, c.detail, c.fix) for c in cdc} == {
        (
            False,
            "the Change Data Capture selection cannot be read (INVALID_TYPE: sObject type"
            " 'PlatformEventChannelMember' is not supported.)",
            "grant the integration user View Setup and Configuration, which reading the selection needs; meanwhile"
            " cdc-ingest streams every object and gets nothing for objects not selected",
        )
    }


def test_no_cdc_checks_when_cdc_is_off_or_for_objects_duplex_never_reads() -> None:
    off = preflight_checks(config(spec__sync__cdc=False), facts(selection=()))
    assert not [c for c in off if "Change Data Capture" in c.name]

    write_only = config(spec__objects__1__direction="app_to_crm", spec__objects__1__fields=_write_only_contact())
    names = [c.name for c in preflight_checks(write_only, facts(selection=[]))]
    assert "Account: Change Data Capture" in names
    assert "Contact: Change Data Capture" not in names


def _write_only_contact() -> list[dict[str, Any]]:
    fields = []
    for mapping in copy.deepcopy(SAMPLE["spec"]["objects"][1]["fields"]):
        if mapping.get("direction") == "crm_to_app":
            continue
        mapping.pop("direction", None)
        mapping.pop("conflictPolicy", None)
        fields.append(mapping)
    return fields


@pytest.mark.parametrize(
    ("sobject", "event"),
    [
        ("Account", "AccountChangeEvent"),
        ("Partner_Tier__c", "Partner_Tier__ChangeEvent"),
        ("ns__X__c", "ns__X__ChangeEvent"),
    ],
)
def test_change_event_names(sobject: str, event: str) -> None:
    assert change_event_name(sobject) == event


# --- the reads -------------------------------------------------------------------------------------


class FakeReader:
    """Answers from dicts; a Failure given for a read is raised as that read's ReadError."""

    def __init__(self, **answers: Any) -> None:
        self.answers = {"sign_in": SignedIn("https://x.my.salesforce.com"), "limits": LIMITS, **answers}
        self.made: list[str] = []

    @property
    def calls(self) -> int:
        return sum(1 for call in self.made if call != "sign_in")

    def _answer(self, key: str, default: Any = None) -> Any:
        self.made.append(key)
        answer = self.answers.get(key, default)
        if isinstance(answer, Failure):
            raise ReadError(answer)
        return answer

    async def sign_in(self) -> SignedIn:
        answer: SignedIn = self._answer("sign_in")
        return answer

    async def limits(self) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._answer("limits")
        return answer

    async def describe(self, sobject: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._answer(f"describe {sobject}", described().get(sobject))
        return answer

    async def cdc_selection(self) -> list[str]:
        answer: list[str] = self._answer("selection", SELECTED)
        return answer


async def test_the_reads_are_one_limits_one_describe_per_object_and_one_tooling_query() -> None:
    reader = FakeReader()
    org = await read_org(config(), reader)
    assert sorted(reader.made) == ["describe Account", "describe Contact", "limits", "selection", "sign_in"]
    assert org.calls == 4
    assert org.describes == described()
    assert org.selection == SELECTED
    assert failing(preflight_checks(config(), org)) == []


async def test_no_tooling_query_when_cdc_is_off() -> None:
    reader = FakeReader()
    org = await read_org(config(spec__sync__cdc=False), reader)
    assert "selection" not in reader.made
    assert org.selection == ()


async def test_nothing_is_read_after_a_failed_sign_in() -> None:
    refused = Failure(FailureKind.AWAITS_CONNECT, "not connected", "not_connected")
    reader = FakeReader(sign_in=refused)
    org = await read_org(config(), reader)
    assert reader.made == ["sign_in"]
    assert org.access == refused
    assert org.calls == 0
    assert isinstance(org.limits, NotRead)
    assert isinstance(org.selection, NotRead)


async def test_nothing_more_is_read_once_the_org_refuses_every_call() -> None:
    exhausted = Failure(FailureKind.REFUSED, "TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED", 403)
    reader = FakeReader(limits=exhausted)
    org = await read_org(config(), reader)
    assert reader.made == ["sign_in", "limits"]
    checks = by_name(preflight_checks(config(), org))
    assert checks["Account: readable"] == Check(
        "Account: readable",
        False,
        "not checked: no further call can work (REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.)",
        "fix 'API limits' first, then check again",
    )


async def test_other_reads_go_on_after_limits_are_refused_for_another_reason() -> None:
    forbidden = Failure(FailureKind.REFUSED, "insufficient access", "INSUFFICIENT_ACCESS", 403)
    reader = FakeReader(limits=forbidden)
    org = await read_org(config(), reader)
    assert "describe Account" in reader.made
    assert "selection" in reader.made
    checks = preflight_checks(config(), org)
    assert [c.name for c in failing(checks)] == ["API limits"]


# --- what the client's errors become ---------------------------------------------------------------


class RaisingClient:
    """Just enough of SalesforceClient for ClientReader: every call raises ``error``."""

    tenant_id = "acme"
    api_base = "/services/data/v62.0"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def session(self) -> Any:
        raise self.error

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            unavailable("needs_reconnect", "refused"),
            Failure(FailureKind.AWAITS_CONNECT, "tenant acme: refused", "needs_reconnect"),
        ),
        (
            unavailable("error", "sign-in failed", "invalid_grant"),
            Failure(FailureKind.SIGN_IN, "tenant acme: sign-in failed", "invalid_grant"),
        ),
        (
            unavailable("error", "no secret", "secret_unavailable"),
            Failure(FailureKind.SECRET, "tenant acme: no secret", "secret_unavailable"),
        ),
        (
            SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist"),
            Failure(FailureKind.REFUSED, "The requested resource does not exist", "NOT_FOUND", 404),
        ),
        (httpx.ConnectError("refused"), Failure(FailureKind.UNREACHABLE, "refused")),
        (ValueError("Expecting value"), Failure(FailureKind.UNREACHABLE, "the answer is not JSON (Expecting value)")),
    ],
)
async def test_client_errors_become_failures(error: Exception, expected: Failure) -> None:
    reader = ClientReader(RaisingClient(error), UnlimitedBudget())  # type: ignore[arg-type]
    with pytest.raises(ReadError) as signed:
        await reader.sign_in()
    assert signed.value.failure == expected
    with pytest.raises(ReadError) as described_:
        await reader.describe("Account")
    assert described_.value.failure == expected

"""Naming what changed between two describes, and the rules each change touches."""

from __future__ import annotations

from services.common.schema import CrmField, CrmObject, PicklistValue, object_document, stored_object
from services.common.schema_drift import ChangeKind, object_changes, rule_warnings, standing_warnings
from services.common.tenant_config import TenantConfig
from tests.fixtures.documents import tenant_config

TIER = CrmField(
    "Tier__c", "Tier", "picklist", 255, picklist=(PicklistValue("Gold", "Gold"), PicklistValue("Silver", "Silver"))
)
BEFORE = CrmObject(
    "Account",
    "Account",
    fields=(
        CrmField("Name", "Account Name", "string", 255, nillable=False),
        CrmField("Code__c", "Code", "string", 20),
        CrmField("Since__c", "Since", "date"),
        CrmField("Duplex_Id__c", "Duplex Id", "string", 64, external_id=True, unique=True),
        TIER,
    ),
)


def changed(**fields: CrmField | None) -> CrmObject:
    kept = [fields.get(f.name, f) for f in BEFORE.fields]
    added = [f for name, f in fields.items() if f is not None and BEFORE.field(name) is None]
    return CrmObject("Account", "Account", fields=tuple(f for f in [*kept, *added] if f is not None))


def config() -> TenantConfig:
    return tenant_config(
        [
            {
                "name": "partners",
                "app": {"object": "partners"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "fields": [
                    {"app": "name", "salesforce": "Name"},
                    {"app": "code", "salesforce": "Code__c", "transform": {"type": "string", "maxLength": 20}},
                    {"app": "since", "salesforce": "Since__c", "direction": "app_to_crm"},
                    {"app": "tier", "salesforce": "Tier__c"},
                ],
            }
        ]
    )


def test_each_kind_of_change_is_named() -> None:
    after = changed(
        Code__c=CrmField("Code__c", "Code", "string", 10),
        Since__c=None,
        Tier__c=CrmField(
            "Tier__c", "Tier", "picklist", 255, picklist=(*TIER.picklist, PicklistValue("Platinum", "Platinum"))
        ),
        Name=CrmField(
            "Name", "Account Name", "string", 255, nillable=False, createable=False, updateable=False, calculated=True
        ),
        New__c=CrmField("New__c", "New", "boolean", nillable=False),
    )
    changes = object_changes("Account", BEFORE, after, cdc_before=True, cdc_after=False)
    assert [(c.kind, c.field, c.message) for c in changes] == [
        (ChangeKind.BECAME_READ_ONLY, "Name", "Account.Name: became read-only"),
        (ChangeKind.BECAME_OPTIONAL, "Name", "Account.Name: became optional"),
        (ChangeKind.LENGTH_CHANGED, "Code__c", "Account.Code__c: shortened from 20 to 10 characters"),
        (ChangeKind.PICKLIST_CHANGED, "Tier__c", "Account.Tier__c: picklist values added Platinum"),
        (ChangeKind.FIELD_ADDED, "New__c", "Account.New__c: added"),
        (ChangeKind.FIELD_REMOVED, "Since__c", "Account.Since__c: deleted"),
        (ChangeKind.CDC_DESELECTED, None, "Account: deselected from Change Data Capture"),
    ]
    assert object_changes("Account", BEFORE, BEFORE, cdc_before=True, cdc_after=True) == []
    assert [c.kind for c in object_changes("Account", BEFORE, None)] == [ChangeKind.OBJECT_REMOVED]


def test_a_deleted_field_pauses_its_rule_and_other_changes_only_warn() -> None:
    after = changed(
        Since__c=None, Code__c=CrmField("Code__c", "Code", "string", 10), New__c=CrmField("New__c", "New", "string")
    )
    warnings = rule_warnings(config(), object_changes("Account", BEFORE, after))
    assert [(w.app_field, w.change.kind, w.paused) for w in warnings] == [
        ("code", ChangeKind.LENGTH_CHANGED, False),
        ("since", ChangeKind.FIELD_REMOVED, True),
    ]
    assert (
        warnings[1].message
        == "Account.Since__c: deleted: pair partners, field since is paused until the mapping is fixed"
    )


def test_a_field_sent_only_to_salesforce_that_became_read_only_is_paused() -> None:
    since = CrmField("Since__c", "Since", "date", createable=False, updateable=False)
    (warning,) = rule_warnings(config(), object_changes("Account", BEFORE, changed(Since__c=since)))
    assert (warning.app_field, warning.change.kind, warning.paused) == ("since", ChangeKind.BECAME_READ_ONLY, True)


def test_an_unmapped_field_becoming_required_warns_that_creates_will_fail() -> None:
    required = CrmField("Region__c", "Region", "string", nillable=True)
    before = changed(Region__c=required)
    after = changed(Region__c=CrmField("Region__c", "Region", "string", nillable=False))
    (warning,) = rule_warnings(config(), object_changes("Account", before, after))
    assert "REQUIRED_FIELD_MISSING" in warning.message
    assert warning.app_field is None


def test_standing_warnings_compare_the_mapping_with_the_newest_describe() -> None:
    now = changed(Since__c=None, Code__c=CrmField("Code__c", "Code", "string", 10))
    warnings = standing_warnings(config(), {"account": now}, {"account": False})
    assert [(w.app_field, w.change.kind, w.paused) for w in warnings] == [
        ("code", ChangeKind.LENGTH_CHANGED, False),
        ("since", ChangeKind.FIELD_REMOVED, True),
        (None, ChangeKind.CDC_DESELECTED, False),
    ]
    assert standing_warnings(config(), {}, {}) == []


def test_a_stored_object_reads_back_equal() -> None:
    assert stored_object(object_document(BEFORE)) == BEFORE

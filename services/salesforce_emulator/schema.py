"""Object and field definitions of an emulated org.

Describe results, validation, SOQL typing and CDC Avro schemas are all derived from these
definitions, so the emulator has one source of truth for what an object looks like.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

FieldType = Literal[
    "id",
    "string",
    "textarea",
    "boolean",
    "int",
    "double",
    "currency",
    "percent",
    "date",
    "datetime",
    "email",
    "phone",
    "url",
    "picklist",
    "multipicklist",
    "reference",
    "address",
]

# Types whose values are JSON strings in REST (length-checked).
TEXT_TYPES: frozenset[FieldType] = frozenset(
    {"id", "string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "reference"}
)
NUMBER_TYPES: frozenset[FieldType] = frozenset({"int", "double", "currency", "percent"})


@dataclass(frozen=True)
class FieldDef:
    """One field as describe reports it."""

    name: str
    type: FieldType
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    # Formula fields: computed on read from `formula`, never written.
    calculated: bool = False
    formula: str | None = None
    custom: bool = False
    external_id: bool = False
    unique: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist_values: tuple[str, ...] = ()
    # Labels in the order of picklist_values; empty when every label is its value (cust_direct can
    # read "Customer - Direct" in describe while the API keeps writing and returning cust_direct).
    picklist_labels: tuple[str, ...] = ()
    defaulted_on_create: bool = False
    default_value: str | bool | int | float | None = None
    name_field: bool = False
    # Children of compound fields (BillingCity of BillingAddress, FirstName of Name) name their
    # compound and the component name used inside the compound's nested Avro record.
    compound_field_name: str | None = None
    compound_component: str | None = None
    # System fields (Id, CreatedDate, SystemModstamp, …) are set by the org, never by callers.
    system: bool = False
    auto_number: bool = False

    @property
    def writable(self) -> bool:
        """True when a caller may set this field on create or update."""
        return (self.createable or self.updateable) and not self.calculated and not self.system

    @property
    def picklist_entries(self) -> tuple[tuple[str, str], ...]:
        """(value, label) of every picklist value, in order."""
        labels = self.picklist_labels or self.picklist_values
        return tuple(zip(self.picklist_values, labels, strict=True))

    @property
    def required_on_create(self) -> bool:
        """Salesforce's rule: createable, not nillable and not defaulted means required."""
        return self.createable and not self.nillable and not self.defaulted_on_create and not self.system


@dataclass(frozen=True)
class ObjectDef:
    """One sObject type."""

    name: str
    key_prefix: str
    label: str
    label_plural: str
    fields: tuple[FieldDef, ...]
    custom: bool = False
    # Whether the object is selected for Change Data Capture in this org.
    cdc_enabled: bool = True
    _by_lower: Mapping[str, FieldDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_lower", {f.name.lower(): f for f in self.fields})

    def field(self, name: str) -> FieldDef | None:
        """Field by API name, case-insensitively (as Salesforce matches them)."""
        return self._by_lower.get(name.lower())

    @property
    def custom_metadata(self) -> bool:
        """A custom metadata type (``Region_Mapping__mdt``): its records are metadata, read-only to the API."""
        return self.name.endswith("__mdt")

    @property
    def external_id_fields(self) -> tuple[FieldDef, ...]:
        """Fields usable for upsert (plus Id)."""
        return tuple(f for f in self.fields if f.external_id)

    @property
    def change_event_name(self) -> str:
        """AccountChangeEvent, Employee__ChangeEvent."""
        base = self.name[: -len("__c")] + "__" if self.name.endswith("__c") else self.name
        return f"{base}ChangeEvent"

    def with_fields(self, extra: Iterable[FieldDef]) -> ObjectDef:
        """A copy with more (custom) fields appended; a redefined field replaces the old one."""
        extra = tuple(extra)
        names = {f.name.lower() for f in extra}
        kept = tuple(f for f in self.fields if f.name.lower() not in names)
        return replace(self, fields=kept + extra)


def _system_fields(*, owner: bool = True) -> tuple[FieldDef, ...]:
    ro = partial(FieldDef, createable=False, updateable=False, system=True)
    fields = [
        ro("Id", "id", "Record ID", length=18, nillable=False),
        ro("IsDeleted", "boolean", "Deleted", nillable=False, defaulted_on_create=True),
        ro("CreatedDate", "datetime", "Created Date", nillable=False, defaulted_on_create=True),
        ro(
            "CreatedById",
            "reference",
            "Created By ID",
            length=18,
            nillable=False,
            defaulted_on_create=True,
            reference_to=("User",),
            relationship_name="CreatedBy",
        ),
        ro("LastModifiedDate", "datetime", "Last Modified Date", nillable=False, defaulted_on_create=True),
        ro(
            "LastModifiedById",
            "reference",
            "Last Modified By ID",
            length=18,
            nillable=False,
            defaulted_on_create=True,
            reference_to=("User",),
            relationship_name="LastModifiedBy",
        ),
        ro("SystemModstamp", "datetime", "System Modstamp", nillable=False, defaulted_on_create=True),
    ]
    if owner:
        fields.append(
            FieldDef(
                "OwnerId",
                "reference",
                "Owner ID",
                length=18,
                nillable=False,
                defaulted_on_create=True,
                reference_to=("User",),
                relationship_name="Owner",
            )
        )
    return tuple(fields)


def _address(prefix: str, label: str) -> tuple[FieldDef, ...]:
    """A compound address: the compound itself (read-only) and its writable components."""
    compound = f"{prefix}Address" if prefix else "Address"
    parts: list[tuple[str, FieldType, int]] = [
        ("Street", "textarea", 255),
        ("City", "string", 40),
        ("State", "string", 80),
        ("PostalCode", "string", 20),
        ("Country", "string", 80),
        ("Latitude", "double", 0),
        ("Longitude", "double", 0),
    ]
    children = tuple(
        FieldDef(
            f"{prefix}{part}",
            ftype,
            f"{label} {part}",
            length=length,
            precision=18 if ftype == "double" else 0,
            scale=15 if ftype == "double" else 0,
            compound_field_name=compound,
            compound_component=part,
        )
        for part, ftype, length in parts
    )
    return (FieldDef(compound, "address", f"{label} Address", createable=False, updateable=False), *children)


def _person_name(*, last_required: bool = True) -> tuple[FieldDef, ...]:
    """Contact/Lead/User Name: a compound of Salutation, FirstName and LastName."""
    return (
        FieldDef(
            "Salutation",
            "picklist",
            "Salutation",
            length=40,
            picklist_values=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."),
            compound_field_name="Name",
            compound_component="Salutation",
        ),
        FieldDef(
            "FirstName", "string", "First Name", length=40, compound_field_name="Name", compound_component="FirstName"
        ),
        FieldDef(
            "LastName",
            "string",
            "Last Name",
            length=80,
            nillable=not last_required,
            compound_field_name="Name",
            compound_component="LastName",
        ),
        FieldDef("Name", "string", "Full Name", length=121, createable=False, updateable=False, name_field=True),
    )


def _master_record() -> FieldDef:
    # Set on the loser of a merge; lets a subscriber re-point links to the winner.
    return FieldDef(
        "MasterRecordId",
        "reference",
        "Master Record ID",
        length=18,
        createable=False,
        updateable=False,
        reference_to=(),
        relationship_name="MasterRecord",
    )


def _ref(name: str, target: str, relationship: str, *, required: bool = False, updateable: bool = True) -> FieldDef:
    return FieldDef(
        name,
        "reference",
        name,
        length=18,
        nillable=not required,
        reference_to=(target,),
        relationship_name=relationship,
        createable=updateable,
        updateable=updateable,
    )


ACCOUNT = ObjectDef(
    "Account",
    "001",
    "Account",
    "Accounts",
    (
        *_system_fields(),
        replace(_master_record(), reference_to=("Account",)),
        FieldDef("Name", "string", "Account Name", length=255, nillable=False, name_field=True),
        FieldDef("AccountNumber", "string", "Account Number", length=40),
        FieldDef(
            "Type",
            "picklist",
            "Account Type",
            length=255,
            picklist_values=("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other"),
        ),
        FieldDef(
            "Industry",
            "picklist",
            "Industry",
            length=255,
            picklist_values=("Agriculture", "Banking", "Education", "Energy", "Manufacturing", "Retail", "Technology"),
        ),
        FieldDef("Phone", "phone", "Account Phone", length=40),
        FieldDef("Website", "url", "Website", length=255),
        FieldDef("AnnualRevenue", "currency", "Annual Revenue", precision=18, scale=0),
        FieldDef("NumberOfEmployees", "int", "Employees", precision=8),
        FieldDef("Description", "textarea", "Account Description", length=32000),
        _ref("ParentId", "Account", "Parent"),
        *_address("Billing", "Billing"),
        *_address("Shipping", "Shipping"),
    ),
)

CONTACT = ObjectDef(
    "Contact",
    "003",
    "Contact",
    "Contacts",
    (
        *_system_fields(),
        replace(_master_record(), reference_to=("Contact",)),
        *_person_name(),
        _ref("AccountId", "Account", "Account"),
        FieldDef("Email", "email", "Email", length=80),
        FieldDef(
            "HasOptedOutOfEmail",
            "boolean",
            "Email Opt Out",
            nillable=False,
            defaulted_on_create=True,
            default_value=False,
        ),
        FieldDef("Phone", "phone", "Business Phone", length=40),
        FieldDef("MobilePhone", "phone", "Mobile Phone", length=40),
        FieldDef("Title", "string", "Title", length=128),
        FieldDef("Birthdate", "date", "Birthdate"),
        FieldDef("Description", "textarea", "Contact Description", length=32000),
        *_address("Mailing", "Mailing"),
    ),
)

LEAD = ObjectDef(
    "Lead",
    "00Q",
    "Lead",
    "Leads",
    (
        *_system_fields(),
        replace(_master_record(), reference_to=("Lead",)),
        *_person_name(),
        FieldDef("Company", "string", "Company", length=255, nillable=False),
        FieldDef("Email", "email", "Email", length=80),
        FieldDef("Phone", "phone", "Phone", length=40),
        FieldDef("Title", "string", "Title", length=128),
        FieldDef(
            "Status",
            "picklist",
            "Status",
            length=255,
            nillable=False,
            defaulted_on_create=True,
            default_value="Open - Not Contacted",
            picklist_values=(
                "Open - Not Contacted",
                "Working - Contacted",
                "Closed - Converted",
                "Closed - Not Converted",
            ),
        ),
        FieldDef(
            "LeadSource",
            "picklist",
            "Lead Source",
            length=255,
            picklist_values=("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"),
        ),
        FieldDef(
            "IsConverted",
            "boolean",
            "Converted",
            nillable=False,
            defaulted_on_create=True,
            default_value=False,
            createable=False,
            updateable=False,
        ),
        FieldDef("ConvertedDate", "date", "Converted Date", createable=False, updateable=False),
        _ref("ConvertedAccountId", "Account", "ConvertedAccount", updateable=False),
        _ref("ConvertedContactId", "Contact", "ConvertedContact", updateable=False),
        _ref("ConvertedOpportunityId", "Opportunity", "ConvertedOpportunity", updateable=False),
        *_address("", "Lead"),
    ),
)

OPPORTUNITY = ObjectDef(
    "Opportunity",
    "006",
    "Opportunity",
    "Opportunities",
    (
        *_system_fields(),
        FieldDef("Name", "string", "Name", length=120, nillable=False, name_field=True),
        _ref("AccountId", "Account", "Account"),
        FieldDef(
            "StageName",
            "picklist",
            "Stage",
            length=255,
            nillable=False,
            picklist_values=(
                "Prospecting",
                "Qualification",
                "Needs Analysis",
                "Value Proposition",
                "Closed Won",
                "Closed Lost",
            ),
        ),
        FieldDef("CloseDate", "date", "Close Date", nillable=False),
        FieldDef("Amount", "currency", "Amount", precision=16, scale=2),
        FieldDef("Probability", "percent", "Probability (%)", precision=3, scale=0),
        FieldDef(
            "Type", "picklist", "Opportunity Type", length=255, picklist_values=("New Customer", "Existing Customer")
        ),
        FieldDef("Description", "textarea", "Description", length=32000),
        FieldDef(
            "IsClosed",
            "boolean",
            "Closed",
            calculated=True,
            formula="StageName IN ('Closed Won', 'Closed Lost')",
            createable=False,
            updateable=False,
            nillable=False,
        ),
    ),
)

CASE = ObjectDef(
    "Case",
    "500",
    "Case",
    "Cases",
    (
        *_system_fields(),
        replace(_master_record(), reference_to=("Case",)),
        FieldDef(
            "CaseNumber",
            "string",
            "Case Number",
            length=30,
            auto_number=True,
            createable=False,
            updateable=False,
            nillable=False,
            defaulted_on_create=True,
            name_field=True,
        ),
        FieldDef("Subject", "string", "Subject", length=255),
        FieldDef("Description", "textarea", "Description", length=32000),
        FieldDef(
            "Status",
            "picklist",
            "Status",
            length=255,
            defaulted_on_create=True,
            default_value="New",
            picklist_values=("New", "Working", "Escalated", "Closed"),
        ),
        FieldDef("Priority", "picklist", "Priority", length=255, picklist_values=("High", "Medium", "Low")),
        FieldDef("Origin", "picklist", "Case Origin", length=255, picklist_values=("Phone", "Email", "Web")),
        _ref("AccountId", "Account", "Account"),
        _ref("ContactId", "Contact", "Contact"),
    ),
)

USER = ObjectDef(
    "User",
    "005",
    "User",
    "Users",
    (
        *_system_fields(owner=False),
        *_person_name(),
        FieldDef("Username", "string", "Username", length=80, nillable=False, unique=True, name_field=False),
        FieldDef("Email", "email", "Email", length=128, nillable=False),
        FieldDef("Alias", "string", "Alias", length=8, nillable=False),
        FieldDef("IsActive", "boolean", "Active", nillable=False, defaulted_on_create=True, default_value=True),
        FieldDef("TimeZoneSidKey", "picklist", "Time Zone", length=40, picklist_values=("GMT", "Europe/Paris")),
    ),
)

STANDARD_OBJECTS: tuple[ObjectDef, ...] = (ACCOUNT, CONTACT, LEAD, OPPORTUNITY, CASE, USER)


def custom_object(api_name: str, key_prefix: str, label: str, fields: Iterable[FieldDef]) -> ObjectDef:
    """A custom object (`Employee__c`): system fields, a Name field, and the given custom fields."""
    if not api_name.endswith("__c"):
        msg = f"custom object names end in __c: {api_name!r}"
        raise ValueError(msg)
    return ObjectDef(
        api_name,
        key_prefix,
        label,
        f"{label}s",
        (
            *_system_fields(),
            FieldDef("Name", "string", f"{label} Name", length=80, nillable=False, name_field=True),
            *fields,
        ),
        custom=True,
    )


def custom_metadata_type(
    api_name: str, key_prefix: str, label: str, label_plural: str, fields: Iterable[FieldDef]
) -> ObjectDef:
    """A custom metadata type (``Region_Mapping__mdt``): its standard fields, then the given custom ones.

    The standard fields are those the object reference lists for ``Custom Metadata Type__mdt``
    (DeveloperName, isProtected, Label, Language, MasterLabel, NamespacePrefix, QualifiedApiName)
    plus Id. Every field is read-only: records change through Setup or a metadata deploy, never
    through data API writes, and the type is never selected for Change Data Capture.
    """
    if not api_name.endswith("__mdt"):
        msg = f"custom metadata type names end in __mdt: {api_name!r}"
        raise ValueError(msg)
    ro = partial(FieldDef, createable=False, updateable=False)
    standard = (
        ro("Id", "id", "Custom Metadata Record ID", length=18, nillable=False, system=True),
        ro("DeveloperName", "string", "Name", length=40, nillable=False, defaulted_on_create=True),
        ro("MasterLabel", "string", "Label", length=40, nillable=False, name_field=True),
        ro("Language", "picklist", "Master Language", length=40, nillable=False, picklist_values=("en_US",)),
        ro("NamespacePrefix", "string", "Namespace Prefix", length=15),
        ro("Label", "string", "Label", length=40),
        ro("QualifiedApiName", "string", "Qualified API Name", length=70, nillable=False),
        ro("IsProtected", "boolean", "Protected Component", nillable=False, defaulted_on_create=True),
    )
    readonly = tuple(replace(f, createable=False, updateable=False) for f in fields)
    return ObjectDef(api_name, key_prefix, label, label_plural, (*standard, *readonly), custom=True, cdc_enabled=False)

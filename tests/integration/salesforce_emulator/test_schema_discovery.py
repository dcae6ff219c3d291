"""Schema discovery and drift, in process through the API gateway: what describe, SOQL and the CDC
selection show of standard objects, custom objects and custom metadata types (``__mdt``), picklist
labels, and the schema changes an admin makes in Setup (through the emulator's admin API)."""

from __future__ import annotations

import email.utils
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator, build_app
from services.salesforce_emulator.orgs import OrgRegistry, OrgRepository
from services.salesforce_emulator.pubsub import resolve_topic
from services.salesforce_emulator.seed import apply_seed, load_seed
from services.salesforce_emulator.settings import EmulatorSettings

pytestmark = pytest.mark.integration

API = "/services/data/v62.0"
ADMIN_TOKEN = "drift-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOOLING_SELECTION = "SELECT SelectedEntity FROM PlatformEventChannelMember WHERE EventChannel = 'ChangeEvents'"
MAPPING = "Region_Mapping__mdt"

SEED = """
orgs:
  - alias: drift
    default: true
    users:
      - {username: admin@drift.example, password: drift-password}
    clients:
      - name: duplex
        client_id: drift-client
        client_secret: drift-secret
        pkce_required: false
        execution_user: admin@drift.example
    objects:
      Account:
        fields:
          - name: Segment__c
            type: picklist
            default_value: cust_direct
            picklist_values:
              - {value: cust_direct, label: Customer - Direct}
              - {value: cust_channel, label: Customer - Channel}
              - Prospect
          - {name: Code__c, type: string, length: 20, label: Code}
      Ticket__c:
        label: Ticket
        fields:
          - {name: Subject__c, type: string, length: 80}
    metadata_types:
      Region_Mapping__mdt:
        label: Region Mapping
        plural_label: Region Mappings
        fields:
          - {name: Country_Code__c, type: string, length: 2, required: true}
          - name: Region__c
            type: picklist
            picklist_values: [{value: emea, label: "Europe, Middle East and Africa"}, amer]
          - {name: Priority__c, type: int}
          - {name: Active__c, type: boolean}
        records:
          - {DeveloperName: France, Country_Code__c: FR, Region__c: emea, Priority__c: 2, Active__c: true}
          - {DeveloperName: United_States, MasterLabel: United States, Country_Code__c: US, Region__c: amer}
"""


@dataclass
class Org:
    emulator: Emulator
    client: TestClient
    auth: dict[str, str]

    @property
    def org_id(self) -> str:
        return self.emulator.default_org.org_id

    def get(self, path: str, *, since: str | None = None) -> httpx.Response:
        """A data API GET; ``since`` is sent as If-Modified-Since."""
        headers = {**self.auth, **({"If-Modified-Since": since} if since else {})}
        response: httpx.Response = self.client.get(f"{API}{path}", headers=headers)
        return response

    def query(self, soql: str) -> Any:
        response = self.client.get(f"{API}/query", params={"q": soql}, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    def describe(self, sobject: str) -> Any:
        response = self.get(f"/sobjects/{sobject}/describe")
        assert response.status_code == 200, response.text
        return response.json()

    def field(self, sobject: str, name: str) -> Any:
        return next(f for f in self.describe(sobject)["fields"] if f["name"] == name)

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response: httpx.Response = self.client.request(
            method, f"/__emulator__/orgs/drift{path}", headers=ADMIN, json=body
        )
        return response

    def selected(self) -> set[str]:
        response = self.client.get(f"{API}/tooling/query/", params={"q": TOOLING_SELECTION}, headers=self.auth)
        assert response.status_code == 200, response.text
        return {r["SelectedEntity"] for r in response.json()["records"]}

    def event_channels(self) -> list[tuple[str, ...]]:
        return [e.channels for e in self.emulator.event_log.events(self.org_id)]


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Org]:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED, encoding="utf-8")
    # A clock that stands still: describe's Last-Modified must still move on every schema change.
    clock = datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp
    settings = EmulatorSettings(
        data_file=":memory:", seed_file=seed, tls=False, admin_token=ADMIN_TOKEN, https_port=8443
    )
    emulator = build_app(settings, clock=clock)
    client = TestClient(emulator.app, base_url=emulator.instance_url)
    token = client.post(
        "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "drift-client",
            "client_secret": "drift-secret",
            "username": "admin@drift.example",
            "password": "drift-password",
        },
    )
    assert token.status_code == 200, token.text
    yield Org(emulator, client, {"Authorization": f"Bearer {token.json()['access_token']}"})
    emulator.close()


# --- discovery ------------------------------------------------------------------------------------


def test_global_describe_lists_standard_custom_and_metadata_objects_with_their_flags(org: Org) -> None:
    listed = {o["name"]: o for o in org.get("/sobjects/").json()["sobjects"]}

    assert {"Account", "Contact", "Case", "Ticket__c", MAPPING} <= set(listed)
    flags = ("custom", "customSetting", "queryable", "retrieveable", "createable", "updateable", "deletable")
    assert [listed["Account"][f] for f in flags] == [False, False, True, True, True, True, True]
    assert [listed["Ticket__c"][f] for f in flags] == [True, False, True, True, True, True, True]
    assert [listed[MAPPING][f] for f in flags] == [True, False, True, True, False, False, False]
    mdt = listed[MAPPING]
    assert (mdt["label"], mdt["labelPlural"], mdt["keyPrefix"]) == ("Region Mapping", "Region Mappings", "m00")
    assert not any(mdt[f] for f in ("replicateable", "searchable", "triggerable", "undeletable", "mergeable"))
    assert listed["Ticket__c"]["keyPrefix"] == "a00"
    assert mdt["urls"]["describe"] == f"{API}/sobjects/{MAPPING}/describe"


def test_a_custom_metadata_type_describes_its_standard_fields_then_its_custom_fields(org: Org) -> None:
    described = org.describe(MAPPING)

    assert (described["name"], described["custom"], described["createable"]) == (MAPPING, True, False)
    fields = {f["name"]: f for f in described["fields"]}
    assert list(fields) == [
        "Id",
        "DeveloperName",
        "MasterLabel",
        "Language",
        "NamespacePrefix",
        "Label",
        "QualifiedApiName",
        "IsProtected",
        "Country_Code__c",
        "Region__c",
        "Priority__c",
        "Active__c",
    ]
    assert not any(f["createable"] or f["updateable"] for f in fields.values())
    assert fields["Country_Code__c"]["custom"] is True
    assert (fields["Country_Code__c"]["length"], fields["Country_Code__c"]["nillable"]) == (2, False)
    assert fields["DeveloperName"]["custom"] is False
    assert [(v["value"], v["label"]) for v in fields["Region__c"]["picklistValues"]] == [
        ("emea", "Europe, Middle East and Africa"),
        ("amer", "amer"),
    ]
    basic = org.get(f"/sobjects/{MAPPING}").json()
    assert basic["objectDescribe"]["createable"] is False
    assert basic["recentItems"] == []


def test_soql_reads_custom_metadata_records_and_rest_retrieves_them_by_id(org: Org) -> None:
    body = org.query(
        f"SELECT Id, DeveloperName, MasterLabel, Label, QualifiedApiName, NamespacePrefix, Country_Code__c,"
        f" Region__c, Priority__c, Active__c FROM {MAPPING} WHERE Country_Code__c != 'DE' ORDER BY DeveloperName"
    )

    assert body["totalSize"] == 2
    france, states = body["records"]
    assert france["attributes"] == {"type": MAPPING, "url": f"{API}/sobjects/{MAPPING}/{france['Id']}"}
    assert france["Id"].startswith("m00")
    assert len(france["Id"]) == 18
    assert {k: v for k, v in france.items() if k not in ("attributes", "Id")} == {
        "DeveloperName": "France",
        "MasterLabel": "France",
        "Label": "France",
        "QualifiedApiName": "France",
        "NamespacePrefix": None,
        "Country_Code__c": "FR",
        "Region__c": "emea",
        "Priority__c": 2,
        "Active__c": True,
    }
    assert (states["MasterLabel"], states["Priority__c"], states["Active__c"]) == ("United States", None, False)
    assert org.query(f"SELECT COUNT() FROM {MAPPING} WHERE Region__c = 'amer'")["totalSize"] == 1
    retrieved = org.get(f"/sobjects/{MAPPING}/{france['Id'][:15]}")
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["DeveloperName"] == "France"
    assert retrieved.json()["Language"] == "en_US"
    unknown = org.query(f"SELECT Id FROM {MAPPING} WHERE DeveloperName = 'Nowhere'")
    assert unknown["totalSize"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "verb"),
    [
        ("POST", f"/sobjects/{MAPPING}", {"DeveloperName": "Spain", "Country_Code__c": "ES"}, "inserted"),
        ("PATCH", f"/sobjects/{MAPPING}/{{id}}", {"Country_Code__c": "XX"}, "updated"),
        ("DELETE", f"/sobjects/{MAPPING}/{{id}}", None, "deleted"),
        ("POST", f"/sobjects/{MAPPING}/Id", {"Country_Code__c": "XX"}, "inserted"),
    ],
)
def test_data_api_writes_to_custom_metadata_are_refused_as_salesforce_refuses_them(
    org: Org, method: str, path: str, body: Any, verb: str
) -> None:
    record = org.query(f"SELECT Id FROM {MAPPING} WHERE DeveloperName = 'France'")["records"][0]["Id"]

    refused = org.client.request(method, API + path.format(id=record), headers=org.auth, json=body)

    assert refused.status_code == 400, refused.text
    assert refused.json() == [
        {
            "message": f"entity type cannot be {verb}: Region Mapping",
            "errorCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        }
    ]
    assert org.query(f"SELECT Country_Code__c FROM {MAPPING} WHERE Id = '{record}'")["records"][0][
        "Country_Code__c"
    ] == ("FR")


def test_collection_writes_to_custom_metadata_fail_per_record(org: Org) -> None:
    record = org.query(f"SELECT Id FROM {MAPPING} WHERE DeveloperName = 'France'")["records"][0]["Id"]
    create = {"records": [{"attributes": {"type": MAPPING}, "DeveloperName": "Spain"}]}

    created = org.client.post(f"{API}/composite/sobjects", headers=org.auth, json=create)
    deleted = org.client.delete(f"{API}/composite/sobjects", params={"ids": record}, headers=org.auth)

    assert created.status_code == deleted.status_code == 200
    assert created.json()[0]["errors"][0]["statusCode"] == "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"
    assert deleted.json()[0] == {
        "id": record,
        "success": False,
        "errors": [
            {
                "statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                "message": "entity type cannot be deleted: Region Mapping",
                "fields": [],
            }
        ],
    }


def test_custom_metadata_is_never_selected_for_cdc(org: Org) -> None:
    assert "Ticket__ChangeEvent" in org.selected()
    assert not any("mdt" in entity for entity in org.selected())

    refused = org.admin("PUT", f"/objects/{MAPPING}", {"cdc_enabled": True})
    org.admin("PUT", f"/metadata-types/{MAPPING}", {"fields": [], "records": [{"DeveloperName": "Spain"}]})

    assert refused.status_code == 400
    assert "custom metadata type" in refused.json()[0]["message"]
    assert not any("mdt" in entity for entity in org.selected())
    assert org.event_channels() == []
    # No change event channel exists for a custom metadata type.
    objects = org.emulator.orgs.schema_for(org.org_id)
    assert resolve_topic(f"/data/{MAPPING}ChangeEvent", objects) is None
    assert resolve_topic("/data/Ticket__ChangeEvent", objects) is not None


# --- custom metadata types through the admin API ----------------------------------------------------


def test_putting_a_metadata_type_replaces_its_fields_and_records_and_keeps_record_ids(org: Org) -> None:
    france = org.query(f"SELECT Id FROM {MAPPING} WHERE DeveloperName = 'France'")["records"][0]["Id"]
    spec = {
        "label": "Region Mapping",
        "fields": [{"name": "Country_Code__c", "type": "string", "length": 3}],
        "records": [
            {"DeveloperName": "France", "Country_Code__c": "FRA"},
            {"DeveloperName": "Germany", "MasterLabel": "Deutschland", "country_code__c": "DEU"},
        ],
    }

    replaced = org.admin("PUT", f"/metadata-types/{MAPPING}", spec)

    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["key_prefix"] == "m00"
    assert [r["DeveloperName"] for r in replaced.json()["records"]] == ["France", "Germany"]
    rows = org.query(f"SELECT Id, DeveloperName, MasterLabel, Country_Code__c FROM {MAPPING} ORDER BY DeveloperName")
    assert [(r["DeveloperName"], r["MasterLabel"], r["Country_Code__c"]) for r in rows["records"]] == [
        ("France", "France", "FRA"),
        ("Germany", "Deutschland", "DEU"),
    ]
    assert rows["records"][0]["Id"] == france
    assert "Region__c" not in {f["name"] for f in org.describe(MAPPING)["fields"]}
    second = org.admin("PUT", "/metadata-types/Tax_Rate__mdt", {"records": [{"DeveloperName": "Standard"}]})
    assert second.json()["key_prefix"] == "m01"
    assert second.json()["records"][0]["Id"].startswith("m01")


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("Region_Mapping__c", {}, "custom metadata type names look like Region_Mapping__mdt"),
        ("Bad__Name__mdt", {}, "custom metadata type names look like Region_Mapping__mdt"),
        (MAPPING, {"records": [{"MasterLabel": "No name"}]}, "needs a DeveloperName"),
        (MAPPING, {"records": [{"DeveloperName": "A"}, {"DeveloperName": "a"}]}, "'a' is used twice"),
        (MAPPING, {"records": [{"DeveloperName": "A", "Nope__c": 1}]}, "not custom fields of the type: Nope__c"),
        (MAPPING, {"records": [{"DeveloperName": "A", "Id": "m00000000000001"}]}, "not custom fields of the type: Id"),
        (
            MAPPING,
            {
                "fields": [{"name": "Code__c", "type": "string", "length": 2}],
                "records": [{"DeveloperName": "A", "Code__c": "ABC"}],
            },
            "data value too large",
        ),
        (
            MAPPING,
            {"fields": [{"name": "Code__c", "type": "string", "required": True}], "records": [{"DeveloperName": "A"}]},
            "required fields are missing: Code__c",
        ),
        (MAPPING, {"fields": [{"name": "Owner__c", "type": "reference"}]}, "no reference fields"),
    ],
)
def test_a_metadata_type_that_does_not_build_is_refused_and_changes_nothing(
    org: Org, name: str, spec: dict[str, Any], message: str
) -> None:
    refused = org.admin("PUT", f"/metadata-types/{name}", spec)

    assert refused.status_code in (400, 422), refused.text
    assert message in refused.json()[0]["message"]
    assert org.query(f"SELECT COUNT() FROM {MAPPING}")["totalSize"] == 2


def test_a_deleted_metadata_type_leaves_describe_and_soql(org: Org) -> None:
    assert org.admin("DELETE", f"/metadata-types/{MAPPING}").status_code == 204

    assert MAPPING not in {o["name"] for o in org.get("/sobjects/").json()["sobjects"]}
    assert org.get(f"/sobjects/{MAPPING}/describe").status_code == 404
    gone = org.client.get(f"{API}/query", params={"q": f"SELECT Id FROM {MAPPING}"}, headers=org.auth)
    assert gone.status_code == 400
    assert gone.json()[0]["errorCode"] == "INVALID_TYPE"
    again = org.admin("DELETE", f"/metadata-types/{MAPPING}")
    assert again.status_code == 404


def test_metadata_types_and_picklist_labels_persist_with_the_org(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED, encoding="utf-8")
    path = str(tmp_path / "orgs.db")

    def registry() -> OrgRegistry:
        return OrgRegistry(OrgRepository(sqlite3.connect(path, check_same_thread=False), threading.Lock()))

    first = registry()
    apply_seed(first, load_seed(seed))
    again = registry().get("drift")

    assert [r["DeveloperName"] for r in again.metadata_records[MAPPING]] == ["France", "United_States"]
    assert again.metadata_records[MAPPING] == first.get("drift").metadata_records[MAPPING]
    segment = again.objects["Account"].field("Segment__c")
    assert segment is not None
    assert segment.picklist_entries == (
        ("cust_direct", "Customer - Direct"),
        ("cust_channel", "Customer - Channel"),
        ("Prospect", "Prospect"),
    )


# --- picklist labels --------------------------------------------------------------------------------


def test_picklist_values_show_their_labels_and_the_default_in_describe(org: Org) -> None:
    segment = org.field("Account", "Segment__c")

    assert segment["picklistValues"] == [
        {"active": True, "defaultValue": True, "label": "Customer - Direct", "validFor": None, "value": "cust_direct"},
        {
            "active": True,
            "defaultValue": False,
            "label": "Customer - Channel",
            "validFor": None,
            "value": "cust_channel",
        },
        {"active": True, "defaultValue": False, "label": "Prospect", "validFor": None, "value": "Prospect"},
    ]
    created = org.client.post(f"{API}/sobjects/Account", headers=org.auth, json={"Name": "Acme"})
    # Records carry the API value, never the label.
    assert org.get(f"/sobjects/Account/{created.json()['id']}").json()["Segment__c"] == "cust_direct"
    # Standard picklists keep label = value.
    assert {v["label"] == v["value"] for v in org.field("Account", "Industry")["picklistValues"]} == {True}


def test_a_picklist_value_listed_twice_is_refused(org: Org) -> None:
    field = {"name": "Tier__c", "type": "picklist", "picklist_values": ["Gold", {"value": "gold", "label": "Or"}]}

    refused = org.admin("PUT", "/objects/Account", {"fields": [field]})

    assert refused.status_code == 422
    assert "listed twice" in refused.json()[0]["message"]


# --- schema changes made in Setup -------------------------------------------------------------------

CODE = {"name": "Code__c", "type": "string", "length": 20, "label": "Code"}
SEGMENT_VALUES = [
    {"value": "cust_direct", "label": "Customer - Direct"},
    {"value": "cust_channel", "label": "Customer - Channel"},
    "Prospect",
]


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ({**CODE, "length": 10}, {"length": 10}),
        ({**CODE, "length": 120}, {"length": 120}),
        ({**CODE, "required": True}, {"nillable": False}),
        ({**CODE, "readonly": True}, {"createable": False, "updateable": False}),
        (
            {"name": "Segment__c", "type": "picklist", "picklist_values": [*SEGMENT_VALUES, "Partner"]},
            {"picklist": ["cust_direct", "cust_channel", "Prospect", "Partner"]},
        ),
        (
            {"name": "Segment__c", "type": "picklist", "picklist_values": SEGMENT_VALUES[1:]},
            {"picklist": ["cust_channel", "Prospect"]},
        ),
    ],
    ids=["shorter", "longer", "required", "read-only", "picklist-value-added", "picklist-value-removed"],
)
def test_each_setup_change_shows_in_describe_and_moves_its_last_modified(
    org: Org, field: dict[str, Any], shown: dict[str, Any]
) -> None:
    first = org.get("/sobjects/Account/describe")
    since = first.headers["Last-Modified"]
    assert org.get("/sobjects/Account/describe", since=since).status_code == 304
    generation = org.emulator.default_org.schema_generation

    changed = org.admin("PUT", "/objects/Account", {"fields": [field]})

    assert changed.status_code == 200, changed.text
    assert org.emulator.default_org.schema_generation > generation
    again = org.get("/sobjects/Account/describe", since=since)
    assert again.status_code == 200
    assert email.utils.parsedate_to_datetime(again.headers["Last-Modified"]) > email.utils.parsedate_to_datetime(since)
    described = next(f for f in again.json()["fields"] if f["name"] == field["name"])
    expected = {k: v for k, v in shown.items() if k != "picklist"}
    assert {k: described[k] for k in expected} == expected
    if "picklist" in shown:
        assert [v["value"] for v in described["picklistValues"]] == shown["picklist"]
    # Unchanged since the new Last-Modified; other objects kept theirs.
    newer = again.headers["Last-Modified"]
    assert org.get("/sobjects/Account/describe", since=newer).status_code == 304
    assert org.get("/sobjects/Contact/describe", since=since).status_code == 304


def test_records_keep_values_a_changed_field_no_longer_allows(org: Org) -> None:
    created = org.client.post(
        f"{API}/sobjects/Account",
        headers=org.auth,
        json={"Name": "Acme", "Code__c": "ABCDEFGHIJKLMNOP", "Segment__c": "cust_channel"},
    )
    record = f"/sobjects/Account/{created.json()['id']}"

    org.admin(
        "PUT",
        "/objects/Account",
        {
            "fields": [
                {**CODE, "length": 5},
                {"name": "Segment__c", "type": "picklist", "picklist_values": ["Prospect"]},
            ]
        },
    )

    kept = org.get(record).json()
    assert (kept["Code__c"], kept["Segment__c"]) == ("ABCDEFGHIJKLMNOP", "cust_channel")
    too_long = org.client.patch(f"{API}{record}", headers=org.auth, json={"Code__c": "ABCDEF"})
    assert too_long.status_code == 400
    assert too_long.json()[0]["errorCode"] == "STRING_TOO_LONG"


def test_a_required_or_read_only_field_is_enforced_on_writes(org: Org) -> None:
    org.admin("PUT", "/objects/Ticket__c", {"fields": [{"name": "Subject__c", "type": "string", "required": True}]})
    missing = org.client.post(f"{API}/sobjects/Ticket__c", headers=org.auth, json={"Name": "T-1"})
    assert missing.status_code == 400
    assert missing.json()[0]["errorCode"] == "REQUIRED_FIELD_MISSING"

    org.admin("PUT", "/objects/Ticket__c", {"fields": [{"name": "Subject__c", "type": "string", "readonly": True}]})
    refused = org.client.post(f"{API}/sobjects/Ticket__c", headers=org.auth, json={"Name": "T-1", "Subject__c": "x"})
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"


def test_a_metadata_type_change_moves_its_describe_last_modified(org: Org) -> None:
    since = org.get(f"/sobjects/{MAPPING}/describe").headers["Last-Modified"]
    records_only = {
        "label": "Region Mapping",
        "plural_label": "Region Mappings",
        "fields": org.emulator.default_org.state.metadata_types[MAPPING].model_dump(mode="json")["fields"],
        "records": [{"DeveloperName": "Spain", "Country_Code__c": "ES"}],
    }

    org.admin("PUT", f"/metadata-types/{MAPPING}", records_only)
    # Records are data of the type, not its shape: describe is unchanged.
    assert org.get(f"/sobjects/{MAPPING}/describe", since=since).status_code == 304
    org.admin("PUT", f"/metadata-types/{MAPPING}", {**records_only, "fields": [], "records": []})

    assert org.get(f"/sobjects/{MAPPING}/describe", since=since).status_code == 200


def test_a_new_field_changes_the_change_event_schema_and_a_longer_one_does_not(org: Org) -> None:
    def write() -> str:
        created = org.client.post(f"{API}/sobjects/Account", headers=org.auth, json={"Name": "Acme"})
        assert created.status_code == 201, created.text
        return org.emulator.event_log.events(org.org_id)[-1].schema_id

    before = write()
    org.admin("PUT", "/objects/Account", {"fields": [{**CODE, "length": 200}]})
    # Avro carries no length: the event shape, and so its schema id, stay.
    assert write() == before
    org.admin("PUT", "/objects/Account", {"fields": [{"name": "Rank__c", "type": "int"}]})

    after = write()
    assert after != before
    assert '"Rank__c"' in (org.emulator.event_log.schema_json(after) or "")


def test_deselecting_an_object_from_cdc_removes_its_selection_row_and_stops_its_events(org: Org) -> None:
    def create_ticket() -> None:
        created = org.client.post(f"{API}/sobjects/Ticket__c", headers=org.auth, json={"Name": "T"})
        assert created.status_code == 201, created.text

    create_ticket()
    assert "Ticket__ChangeEvent" in org.selected()
    assert org.event_channels() == [("/data/ChangeEvents", "/data/Ticket__ChangeEvent")]
    since = org.get("/sobjects/Ticket__c/describe").headers["Last-Modified"]

    off = org.admin("PUT", "/objects/Ticket__c", {"cdc_enabled": False})

    assert off.status_code == 200, off.text
    assert off.json()["cdc_enabled"] is False
    assert "Ticket__ChangeEvent" not in org.selected()
    assert "AccountChangeEvent" in org.selected()
    create_ticket()
    assert len(org.event_channels()) == 1
    # The object's fields are untouched, so its describe has not changed.
    assert org.get("/sobjects/Ticket__c/describe", since=since).status_code == 304

    on = org.admin("PUT", "/objects/Ticket__c", {"cdc_enabled": True})

    assert on.json()["cdc_enabled"] is True
    assert "Ticket__ChangeEvent" in org.selected()
    create_ticket()
    assert len(org.event_channels()) == 2

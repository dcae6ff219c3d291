"""Link identity, conversions and merges: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.common.change import Change, ChangeKind, Side
from services.common.tenant_config import TenantConfig, parse_tenant_config
from services.common.values import Value
from services.mapping.links import (
    app_pairs,
    conversion_of,
    conversion_target,
    external_id_for,
    external_id_in,
    link_id_for,
    link_id_of,
    mapped_event_id,
    merge_winner,
    pair_for,
    reference_needs,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CONFIG = parse_tenant_config(yaml.safe_load((ROOT / "deploy/examples/tenant-acme.yaml").read_text()))
AT = datetime(2026, 3, 1, tzinfo=UTC)


def change(side: Side, obj: str, rid: str, fields: dict[str, Value], kind: ChangeKind = ChangeKind.UPDATE) -> Change:
    return Change("e1", "acme", side, obj, rid, kind, fields, AT)


def test_link_ids_and_event_ids_are_deterministic_and_distinct() -> None:
    assert link_id_for("acme", "partners", Side.APP, "a1") == link_id_for("acme", "partners", Side.APP, "a1")
    assert link_id_for("acme", "partners", Side.APP, "a1") != link_id_for("acme", "partners", Side.CRM, "a1")
    c = change(Side.APP, "partners", "a1", {})
    assert mapped_event_id(c) == mapped_event_id(c)
    assert external_id_for("abc") == "dx-abc"


def test_pairs_are_found_by_app_object_or_salesforce_object_case_insensitively() -> None:
    assert pair_for(CONFIG, Side.APP, "partners").name == "partners"  # type: ignore[union-attr]
    assert pair_for(CONFIG, Side.CRM, "account").name == "partners"  # type: ignore[union-attr]
    assert pair_for(CONFIG, Side.CRM, "Opportunity") is None


def test_only_duplex_external_ids_bind_salesforce_records() -> None:
    partners = CONFIG.spec.objects[0]
    assert external_id_in(change(Side.CRM, "Account", "001", {"Duplex_Id__c": "dx-L1"}), partners) == "dx-L1"
    assert external_id_in(change(Side.CRM, "Account", "001", {"Duplex_Id__c": "ERP-7"}), partners) is None
    app = Change("e1", "acme", Side.APP, "partners", "a1", ChangeKind.CREATE, {}, AT, external_id="L1")
    assert external_id_in(app, partners) == "L1"


def test_a_converted_lead_moves_to_the_contact_pair() -> None:
    lead = change(Side.CRM, "Lead", "00Q1", {"ConvertedContactId": "003C", "ConvertedAccountId": "001A"})
    conversion = conversion_of(lead)
    assert conversion is not None
    target = conversion_target(CONFIG, CONFIG.spec.objects[1], conversion)
    assert target is not None
    assert (target[0].name, target[1]) == ("partner_contacts", "003C")
    assert conversion_of(change(Side.CRM, "Lead", "00Q1", {"Status": "Open"})) is None


def test_a_merge_delete_names_the_winner() -> None:
    loser = change(Side.CRM, "Account", "001L", {"MasterRecordId": "001W"}, ChangeKind.DELETE)
    assert merge_winner(loser) == "001W"
    assert merge_winner(change(Side.CRM, "Account", "001L", {}, ChangeKind.DELETE)) is None


def test_reference_values_are_collected_for_lookup() -> None:
    contacts = CONFIG.spec.objects[1]
    needs = reference_needs(contacts, change(Side.CRM, "Contact", "003", {"AccountId": "001P", "LastName": "X"}))
    assert [(n.field, n.target_pair, n.record_id) for n in needs] == [("AccountId", "partners", "001P")]


def _pairs_config(*pairs: tuple[str, str, str]) -> TenantConfig:
    """A config with (pair name, app object, Salesforce object) pairs."""
    document = yaml.safe_load((ROOT / "deploy/examples/tenant-acme.yaml").read_text())
    document["spec"]["objects"] = [
        {
            "name": name,
            "app": {"object": app},
            "salesforce": {"object": crm, "externalIdField": "Duplex_Id__c"},
            "fields": [{"app": "name", "salesforce": "Name"}],
        }
        for name, app, crm in pairs
    ]
    return parse_tenant_config(document)


SHARED = _pairs_config(("leads", "people", "Lead"), ("contacts", "people", "Contact"), ("orgs", "orgs", "Account"))
SEPARATE = _pairs_config(("leads", "leads", "Lead"), ("contacts", "contacts", "Contact"), ("orgs", "orgs", "Account"))
ACCOUNT_ONLY = _pairs_config(("leads", "people", "Lead"), ("orgs", "people", "Account"))


@pytest.mark.parametrize(
    ("config", "fields", "expected"),
    [
        # The Contact pair is on the Lead pair's app object: the app record keeps its identity.
        (SHARED, {"ConvertedContactId": "003C", "ConvertedAccountId": "001A"}, ("contacts", "003C")),
        # The Account pair is on another app object: never a target, even when it is the only one.
        (SHARED, {"ConvertedAccountId": "001A"}, None),
        # Pairs on other app objects only: the lead's link stays where it is.
        (SEPARATE, {"ConvertedContactId": "003C", "ConvertedAccountId": "001A"}, None),
        # The Contact has no pair; the Account's pair shares the app object.
        (ACCOUNT_ONLY, {"ConvertedContactId": "003C", "ConvertedAccountId": "001A"}, ("orgs", "001A")),
        (ACCOUNT_ONLY, {"ConvertedOpportunityId": "006O"}, None),
    ],
)
def test_a_converted_lead_only_moves_to_a_pair_on_its_own_app_object(
    config: TenantConfig, fields: dict[str, Value], expected: tuple[str, str] | None
) -> None:
    conversion = conversion_of(change(Side.CRM, "Lead", "00Q1", fields))
    assert conversion is not None
    lead_pair = config.object_pair("leads")
    assert lead_pair is not None
    target = conversion_target(config, lead_pair, conversion)
    assert (None if target is None else (target[0].name, target[1])) == expected


@pytest.mark.parametrize(
    ("config", "pair", "expected"),
    [
        (SHARED, "leads", ["leads", "contacts"]),
        (SHARED, "contacts", ["contacts", "leads"]),
        (SHARED, "orgs", ["orgs"]),
        (SEPARATE, "leads", ["leads"]),
    ],
)
def test_pairs_sharing_an_app_object_are_candidates_for_its_changes(
    config: TenantConfig, pair: str, expected: list[str]
) -> None:
    found = config.object_pair(pair)
    assert found is not None
    assert [p.name for p in app_pairs(config, found)] == expected


LINK = "0" * 31 + "a"


@pytest.mark.parametrize(
    ("external_id", "side", "expected"),
    [
        (LINK, Side.APP, LINK),  # the app side carries the link id itself
        (f"dx-{LINK}", Side.CRM, LINK),
        (f"dx-{LINK}", Side.APP, None),  # not an app-side form
        ("dx-not-a-link", Side.CRM, None),
        (LINK.upper(), Side.APP, None),
        (LINK + "0", Side.APP, None),
        ("", Side.APP, None),
    ],
)
def test_the_link_a_duplex_external_id_names(external_id: str, side: Side, expected: str | None) -> None:
    assert link_id_of(external_id, side) == expected

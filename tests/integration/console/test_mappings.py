"""An object pair's page in Chromium: suggestions confirmed or ignored, rules changed, the SOQL filter
validated, a draft planned and saved as a new version, and what the API refuses shown next to what it
names with the draft kept. The org's and the app's schemas are stored describes and declarations (no
Salesforce), except in the last test, which counts a filter's records in an emulator org."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from services.admin.auth import Role
from services.common.schema import AppField, AppObject, CrmField, CrmObject, PicklistValue
from services.common.schema_store import declare_app_object, save_described
from services.common.tenant_config import FieldType
from tests.integration.admin_api.conftest import connecting, orgs  # noqa: F401 (fixtures)
from tests.integration.admin_api.connecting import SAMPLE_FIELDS, Connecting, Org
from tests.integration.admin_api.harness import bearer
from tests.integration.admin_api.test_schema import org_client
from tests.integration.console.conftest import Console

pytestmark = pytest.mark.integration


def sf(name: str, kind: str = "string", label: str | None = None, /, **flags: Any) -> CrmField:
    picklist = tuple(PicklistValue(v, v) for v in flags.pop("values", ()))
    return CrmField(name, label or name, kind, picklist=picklist, **flags)


READ_ONLY = {"createable": False, "updateable": False}
# What the sample tenant maps, less Partner_Since__c (deleted in the org: its rule is paused), and a
# few fields it does not map.
ACCOUNT = CrmObject(
    "Account",
    "Account",
    fields=(
        sf("Id", "id", **READ_ONLY),
        sf("Name", "string", "Account Name", length=255, nillable=False),
        sf("Website", "url", length=255),
        sf("Phone", "phone", length=40),
        sf("Partner_Status__c", "picklist", values=("Active", "Onboarding", "Suspended")),
        sf("Tier__c", "picklist", values=("Gold", "Silver", "Bronze")),
        sf("Industries__c", "multipicklist", values=("Software", "Services", "Hardware")),
        sf("AnnualRevenue", "currency", "Annual Revenue"),
        sf("NumberOfEmployees", "int", "Employees"),
        sf("Archived__c", "boolean", defaulted_on_create=True, nillable=False),
        sf("Description", "textarea", length=32000),
        sf("ParentId", "reference", "Parent Account", reference_to=("Account",)),
        sf("SystemModstamp", "datetime", **READ_ONLY),
        sf("Duplex_Id__c", "string", length=64, external_id=True, unique=True),
        sf("BillingPostalCode", "string", "Billing Zip/Postal Code", length=20),
        sf("BillingCity", "string", "Billing City", length=40),
        sf("Type", "picklist", "Account Type", values=("Customer - Direct", "Prospect")),
    ),
)
CONTACT = CrmObject(
    "Contact",
    "Contact",
    fields=(
        sf("Id", "id", **READ_ONLY),
        sf("FirstName", length=40),
        sf("LastName", length=80, nillable=False),
        sf("Email", "email", length=80),
        sf("Phone", "phone", length=40),
        sf("Title", length=128),
        sf("AccountId", "reference", reference_to=("Account",)),
        sf("HasOptedOutOfEmail", "boolean", defaulted_on_create=True, nillable=False),
        sf("Portal_User__c", "boolean", defaulted_on_create=True, nillable=False),
        sf("Duplex_Id__c", length=64, external_id=True, unique=True),
    ),
)
PARTNERS = AppObject(
    "partners",
    (
        AppField("name", "Company name"),
        AppField("phone"),
        AppField("billing_zip", "Billing ZIP code"),
        AppField("favourite_color"),
        AppField("founded", "Founded on", FieldType.DATE),
    ),
)


@pytest.fixture
async def described(console: Console) -> Console:
    db = console.api.db
    for obj in (ACCOUNT, CONTACT):
        await save_described(db, "acme", obj.name, obj, cdc_selected=True)
    await declare_app_object(db, "acme", PARTNERS, "test set-up")
    return console


async def open_pair(console: Console, role: Role, pair: str = "partners") -> Page:
    await console.sign_in(await console.api.token(role, name=f"{role.value} of acme"))
    await console.page.goto(f"{console.base}/console/tenants/acme/pairs/{pair}")
    return console.page


async def current(console: Console) -> dict[str, Any]:
    token = await console.api.token(Role.VIEWER)
    answer = await console.api.http.get("/api/v1/tenants/acme", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def rules_of(version: dict[str, Any], pair: str = "partners") -> dict[str, dict[str, Any]]:
    (found,) = [p for p in version["document"]["spec"]["objects"] if p["name"] == pair]
    return {r["app"]: r for r in found["fields"]}


async def test_confirm_a_suggestion_plan_and_save_a_new_version(described: Console) -> None:
    console = described
    await console.sign_in(await console.api.token(Role.ADMIN, name="mapper"))
    await console.page.goto(f"{console.base}/console/tenants/acme")
    page = console.page
    await page.locator("tr[data-pair=partners]").get_by_role("link", name="partners").click()
    await expect(page.get_by_role("heading", name="partners: partners ⇄ Account")).to_be_visible()

    # Drift: the deleted field's rule is paused and says why.
    paused = page.locator("tr[data-rule=partner_since]")
    await expect(paused).to_contain_text("paused")
    await expect(paused).to_contain_text("Account.Partner_Since__c: not in the org")

    row = page.locator("tr[data-suggestion=billing_zip]")
    await expect(row).to_contain_text("auto")
    await expect(row.locator("ol.candidates li").first).to_contain_text("BillingPostalCode")
    await expect(page.locator("tr[data-suggestion=name]")).to_contain_text("mapped to Name")
    await console.shot("mapping")
    await row.get_by_role("button", name="Confirm BillingPostalCode for billing_zip").click()

    added = page.locator("tr[data-rule=billing_zip]")
    await expect(added).to_contain_text("added")
    await expect(added).to_contain_text("BillingPostalCode")
    await expect(page.locator("[data-draft=dirty]")).to_be_visible()
    await expect(page.locator("tr[data-suggestion=billing_zip]")).to_contain_text("mapped to BillingPostalCode")
    assert (await current(console))["version"] == 1

    await page.get_by_role("button", name="Plan", exact=True).click()
    await expect(page.locator(".plan-lines")).to_have_text("partners: rule billing_zip: added")
    await console.shot("mapping-plan")
    assert (await current(console))["version"] == 1

    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text("saved as version 2")
    await expect(page.locator("[data-draft=dirty]")).to_have_count(0)
    saved = await current(console)
    assert saved["version"] == 2
    assert saved["appliedBy"].startswith("mapper (token ")
    assert rules_of(saved)["billing_zip"] == {
        "app": "billing_zip",
        "salesforce": "BillingPostalCode",
        "allowNulls": False,
        "transform": {"type": "string"},
    }

    # A declared type comes with the rule; a field picked from the whole object is mapped as chosen.
    await page.get_by_label("Another Salesforce field for founded").select_option("BillingCity")
    await page.get_by_role("button", name="Use for founded").click()
    await expect(page.locator("tr[data-rule=founded]")).to_contain_text("BillingCity")
    await expect(page.locator("tr[data-rule=founded]")).to_contain_text("date")


async def test_ignore_a_field_and_save_with_the_keyboard(described: Console) -> None:
    console = described
    page = await open_pair(console, Role.ADMIN)
    row = page.locator("tr[data-suggestion=favourite_color]")
    await expect(row).to_contain_text("unmapped")

    # From the field's select, Tab to Ignore and press Enter: no mouse.
    await row.get_by_label("Another Salesforce field for favourite_color").focus()
    await page.keyboard.press("Tab")
    await expect(row.get_by_role("button", name="Use for favourite_color")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(row.get_by_role("button", name="Ignore favourite_color")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(row).to_contain_text("ignored")
    await expect(row.get_by_role("button", name="Stop ignoring favourite_color")).to_be_visible()

    await page.get_by_role("button", name="Plan", exact=True).focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".plan-lines")).to_contain_text("partners: the pair's settings: changed")
    await expect(page.locator(".plan-lines")).to_contain_text('ignoredFields: [] → ["favourite_color"]')
    # The answer opens at the draft's section, so Tab goes on from there.
    for name in ("Update the draft", "Plan", "Save"):
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name=name, exact=True)).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status")).to_have_text("saved as version 2")
    (partners,) = [p for p in (await current(console))["document"]["spec"]["objects"] if p["name"] == "partners"]
    assert partners["ignoredFields"] == ["favourite_color"]


async def test_change_a_rules_direction(described: Console) -> None:
    console = described
    page = await open_pair(console, Role.ADMIN)
    # Tier maps two app values to Bronze, so it cannot flow back to the app: the API says so, at the rule.
    await page.get_by_label("Direction of tier").select_option("crm_to_app")
    await page.get_by_role("button", name="Plan", exact=True).click()
    await expect(page.locator("#plan-problem")).to_contain_text("the document has 1 problem")
    tier = page.locator("tr[data-rule=tier]")
    await expect(tier.locator(".errors")).to_have_text(
        "transform.valueMap.bronze: Salesforce value 'Bronze' is also mapped from 'trial', so it cannot be mapped"
        " back to one app value (the field flows CRM to app; direction is crm_to_app)"
    )
    await expect(page.get_by_label("Direction of tier")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Direction of tier")).to_have_value("crm_to_app")

    await page.get_by_label("Direction of tier").select_option("app_to_crm")
    # Phone syncs both ways with its own conflict policy, which a one-way rule cannot have.
    await expect(page.get_by_label("Conflict policy of phone")).to_have_value("app_unless_blank")
    await page.get_by_label("Direction of phone").select_option("crm_to_app")
    await page.get_by_role("button", name="Plan", exact=True).click()
    lines = page.locator(".plan-lines")
    await expect(lines).to_contain_text("partners: rule phone: changed")
    await expect(lines).to_contain_text("direction: — → crm_to_app")
    await expect(lines).to_contain_text("conflictPolicy: app_unless_blank → —")
    await expect(page.locator("tr[data-rule=phone]")).to_contain_text("none: one way")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text("saved as version 2")
    rules = rules_of(await current(console))
    assert (rules["phone"]["direction"], "conflictPolicy" in rules["phone"]) == ("crm_to_app", False)
    assert rules["tier"]["direction"] == "app_to_crm"


async def test_a_filter_that_does_not_parse_is_shown_at_its_column_and_nothing_is_saved(described: Console) -> None:
    console = described
    page = await open_pair(console, Role.OPERATOR)
    box = page.get_by_label("SOQL filter on Account (a WHERE clause)")
    await box.focus()
    await page.keyboard.type("Type = 'Customer' AND (AnnualRevenue > 0")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Validate the filter")).to_be_focused()
    await page.keyboard.press("Enter")

    problems = page.locator("#filter-problems")
    await expect(problems.get_by_role("alert")).to_contain_text(
        "column 23: unbalanced parentheses: '(' at column 23 is never closed"
    )
    await expect(problems.locator("mark")).to_have_text("(")
    await expect(box).to_have_value("Type = 'Customer' AND (AnnualRevenue > 0")
    await expect(box).to_have_attribute("aria-invalid", "true")
    await console.shot("mapping-filter")

    # Planned, the document's own check says the same at the same place.
    await page.get_by_role("button", name="Plan", exact=True).click()
    await expect(page.locator("#plan-problem")).to_be_visible()
    await expect(problems).to_contain_text("column 23: unbalanced parentheses")
    # An operator may plan, not save: Save is not offered, and the draft saved anyway is refused.
    await expect(page.get_by_role("button", name="Save", exact=True)).to_have_count(0)
    await expect(page.get_by_text("Only admins can save a draft.")).to_be_visible()
    draft = await page.locator("form.mapping").evaluate("form => Object.fromEntries(new FormData(form))")
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/pairs/partners",
        form={**draft, "op": "save"},
        headers={"origin": console.base},
    )
    assert refused.status == 403
    assert "the operator role may not change configuration" in await refused.text()
    assert (await current(console))["version"] == 1

    # A clause that parses names fields the stored describe checks, without calling Salesforce.
    await box.fill("Tpye = 'Customer'")
    await page.get_by_role("button", name="Validate the filter").click()
    await expect(problems).to_contain_text("column 1: unknown field 'Tpye' on Account; did you mean Type?")
    await expect(problems.locator("mark")).to_have_text("T")
    assert (await current(console))["version"] == 1


async def test_a_draft_leaving_out_a_required_salesforce_field_is_refused_and_kept(described: Console) -> None:
    console = described
    page = await open_pair(console, Role.ADMIN, "partner_contacts")
    await page.locator("tr[data-rule=last_name]").get_by_role("button", name="Remove last_name").click()
    await expect(page.locator("tr[data-rule=last_name]")).to_have_count(0)
    await page.get_by_role("button", name="Save", exact=True).click()

    await expect(page.locator("#plan-problem")).to_contain_text(
        "the document does not fit the org's or the app's schema"
    )
    await expect(page.locator("#rules-problems")).to_have_text(
        "pair partner_contacts creates Salesforce Contact records, which require LastName on create: map it with a"
        " rule flowing to Salesforce (direction both or app_to_crm)"
    )
    # The draft is still the one refused.
    await expect(page.locator("[data-removed]")).to_have_text("Removed in the draft: last_name.")
    await expect(page.locator("tr[data-rule=last_name]")).to_have_count(0)
    await expect(page.locator("[data-draft=dirty]")).to_be_visible()
    assert "last_name" in rules_of(await current(console), "partner_contacts")
    assert (await current(console))["version"] == 1

    # Put back from the Salesforce fields, the draft saves.
    await page.get_by_label("App field", exact=True).fill("last_name")
    await page.get_by_label("Salesforce field", exact=True).select_option("LastName")
    await page.get_by_role("button", name="Add rule").click()
    await expect(page.locator("tr[data-rule=last_name]")).to_contain_text("LastName")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text("saved as version 2")


async def test_a_viewer_may_look_but_not_plan_or_save(described: Console) -> None:
    console = described
    page = await open_pair(console, Role.VIEWER)
    # The saved pair, read-only: no button, every control disabled.
    await expect(page.locator("tr[data-suggestion=favourite_color]")).to_contain_text("unmapped")
    await expect(page.locator("tr[data-rule=tier]")).to_be_visible()
    await expect(page.get_by_role("button")).to_have_text(["Sign out"])
    await expect(page.get_by_label("Direction", exact=True)).to_be_disabled()
    await expect(page.get_by_label("Direction of tier")).to_be_disabled()
    await expect(page.get_by_label("SOQL filter on Account (a WHERE clause)")).to_be_disabled()
    await expect(
        page.get_by_text("Only operators and admins can change and plan a draft, and only admins can save it.")
    ).to_be_visible()
    await expect(page.get_by_text("Only operators and admins can validate the filter.")).to_be_visible()

    # Sent anyway, a draft (the saved document, a field ignored) is refused by the API, each button's way.
    document = (await current(console))["document"]
    (partners,) = [p for p in document["spec"]["objects"] if p["name"] == "partners"]
    partners["ignoredFields"] = ["favourite_color"]
    for op, refusal in (
        ("save", "the viewer role may not change configuration"),
        ("plan", "the viewer role may not control sync runs"),
    ):
        refused = await page.request.post(
            f"{console.base}/console/tenants/acme/pairs/partners",
            form={"draft": json.dumps(document), "base": "1", "op": op},
            headers={"origin": console.base},
        )
        assert refused.status == 403
        assert refusal in await refused.text()
    assert (await current(console))["version"] == 1

    # Posted from another site, the form is refused before anything is read.
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/pairs/partners",
        form={"op": "save"},
        headers={"origin": "https://elsewhere.example"},
    )
    assert refused.status == 403


async def test_readable_on_a_narrow_window(described: Console) -> None:
    console = described
    await console.page.set_viewport_size({"width": 390, "height": 800})
    page = await open_pair(console, Role.ADMIN)
    await expect(page.get_by_role("button", name="Confirm BillingPostalCode for billing_zip")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px window"
    await console.shot("mapping-narrow")


@pytest.fixture
async def connected_page(connecting: Connecting, orgs: tuple[Org, Org], browser: Browser) -> AsyncIterator[Page]:  # noqa: F811
    org = orgs[0]
    for sobject, fields in SAMPLE_FIELDS.items():
        connecting.emulator.admin("PUT", f"/orgs/{org.org_id}/objects/{sobject}", {"fields": fields})
    await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        await context.close()


async def test_validate_counts_a_filters_records_and_plan_tells_who_leaves(
    connecting: Connecting,  # noqa: F811
    orgs: tuple[Org, Org],  # noqa: F811
    connected_page: Page,
) -> None:
    records = org_client(connecting, orgs[0])
    for i in range(7):
        records.Account.create({"Name": f"Customer {i}", "Type": "Customer - Direct"})
    records.Account.create({"Name": "Prospect", "Type": "Prospect"})
    leaving = records.query("SELECT COUNT() FROM Account WHERE NOT (Type = 'Customer - Direct')")["totalSize"]
    console = Console(connecting.api, f"http://127.0.0.1:{connecting.api.running.port}", connected_page)
    page = await open_pair(console, Role.OPERATOR)

    await page.get_by_label("SOQL filter on Account (a WHERE clause)").fill("Type = 'Customer - Direct'")
    await page.get_by_role("button", name="Validate the filter").click()
    await expect(page.locator("#filter-count")).to_have_text(
        "Type = 'Customer - Direct' selects 7 record(s) of Account now."
    )
    await expect(page.locator("#filter .samples tbody tr")).to_have_count(5)

    await page.get_by_role("button", name="Plan", exact=True).click()
    await expect(page.locator("[data-plan-filter=partners]")).to_have_text(
        f"0 record(s) would enter the filter and {leaving} would leave it."
    )
    await expect(page.locator(".plan").get_by_role("table")).to_contain_text("Prospect")
    await expect(page.locator(".plan-lines")).to_contain_text("partners: the pair's settings: changed")
    assert (await current(console))["version"] == 1

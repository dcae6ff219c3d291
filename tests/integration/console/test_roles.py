"""What each role is offered, on every console page of a tenant, in Chromium: a viewer no button that
changes anything, an operator run control but no configuration, an admin everything. Only what is
offered: the API still refuses the rest, as the other tests show by posting the forms anyway."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from services.admin.auth import Role
from services.common.connections import record_connected
from services.common.schema_store import declare_app_object, save_described
from tests.integration.admin_api.harness import bearer
from tests.integration.console.conftest import Console
from tests.integration.console.test_dead_letters import dead_letters, kafka_console  # noqa: F401 (fixtures)
from tests.integration.console.test_history import apply_cap
from tests.integration.console.test_mappings import ACCOUNT, CONTACT, PARTNERS
from tests.integration.console.test_sync_log import SF_7, link, resolved_then_rejected

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TENANT = "/console/tenants/acme"
SIGN_OUT = "/console/sign-out"
# Each button of a form posted to the console, as _SUBMITTERS names it, with the API's route and Action:
CONFIGURE_ONLY = {
    "/connection/connect",  # POST /tenants/{t}/connection:authorize, CONFIGURE
    "/connection/revoke",  # POST /tenants/{t}/connection:revoke, CONFIGURE
    "/versions/1/restore",  # POST /tenants/{t}/versions/{v}:restore, CONFIGURE
    "/pairs/partners op=save",  # PUT /tenants/{t}, CONFIGURE
}
OPERATE = {
    "/jobs",  # POST /tenants/{t}/jobs, OPERATE
    "/pause",  # POST /tenants/{t}/pause, OPERATE
    "/resume",  # POST /tenants/{t}/resume, OPERATE
    "/retries",  # POST /tenants/{t}/retries, OPERATE
    "/dead-letters/replay",  # POST /tenants/{t}/dead-letters:replay, OPERATE
    "/dead-letters/discard",  # POST /tenants/{t}/dead-letters:discard, OPERATE
    "/connection/check",  # POST /tenants/{t}/connection:check, OPERATE
    "/pairs/partners op=plan",  # POST /tenants/{t}/plan, OPERATE
    "/pairs/partners op=validate",  # POST /tenants/{t}/pairs/{p}/filter:validate, OPERATE
    # Edits of the draft call no API: they are offered with Plan, to whoever may plan the draft.
    "/pairs/partners op=update",
    "/pairs/partners op=remove",
    "/pairs/partners op=add",
    "/pairs/partners op=confirm",
    "/pairs/partners op=pick",
    "/pairs/partners op=ignore",
}
OFFERED = {
    Role.VIEWER: {SIGN_OUT},
    Role.OPERATOR: {SIGN_OUT} | OPERATE,
    Role.ADMIN: {SIGN_OUT} | OPERATE | CONFIGURE_ONLY,
}

# Every enabled button (or submit input) of every form posted, named by where it posts under the
# tenant's path and the mapping page's op; and any outside a form, which would look like one more
# thing to press.
_SUBMITTERS = """tenant => {
  const found = [];
  for (const el of document.querySelectorAll("button, input[type=submit], input[type=image]")) {
    if (el.matches(":disabled")) continue;
    const form = el.form;
    if (form === null) {
      found.push(`(no form) ${(el.textContent || el.value).trim()}`);
    } else if (form.method === "post") {
      const path = new URL(el.hasAttribute("formaction") ? el.formAction : form.action).pathname;
      const op = el.name === "op" ? ` op=${el.value.split(":")[0]}` : "";
      found.push((path.startsWith(tenant) ? path.slice(tenant.length) : path) + op);
    }
  }
  return found;
}"""


async def seed(console: Console) -> int:
    """Something on each page for each of its buttons to act on; the job's id."""
    db, admin = console.api.db, await console.api.token(Role.ADMIN, name="seed")
    # The history's version 2, so version 1 has something to restore.
    await apply_cap(console, 6000)
    # One pair paused (Resume), one not (Pause), and a job that ended (its page does not reload).
    paused = await console.api.http.post(
        "/api/v1/tenants/acme/pause", json={"objectPair": "partners", "direction": "to_app"}, headers=bearer(admin)
    )
    assert paused.status_code == 200, paused.text
    asked = await console.api.http.post(
        "/api/v1/tenants/acme/jobs", json={"kind": "reconcile", "objectPair": "partners"}, headers=bearer(admin)
    )
    assert asked.status_code == 202, asked.text
    job_id: int = asked.json()["id"]
    await db.execute(
        "UPDATE jobs SET status = 'succeeded', started_at = now(), finished_at = now() WHERE id = $1", job_id
    )
    # A record whose write Salesforce rejected (Retry).
    await link(console, "l-7", "partners", "p-7", SF_7)
    await resolved_then_rejected(console, "l-7")
    # A connected org (Reconnect, Revoke).
    await record_connected(
        db,
        "acme",
        org_id="00D000000000001EAA",
        user_id="005000000000001AAA",
        username="sync@acme.example",
        instance_url="https://acme.my.salesforce.com",
        scopes=["api", "refresh_token"],
        actor="seed",
    )
    # The org's and the app's schemas (the mapping page's suggestions).
    for obj in (ACCOUNT, CONTACT):
        await save_described(db, "acme", obj.name, obj, cdc_selected=True)
    await declare_app_object(db, "acme", PARTNERS, "test set-up")
    return job_id


@pytest.mark.usefixtures("dead_letters")
@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.ADMIN])
async def test_each_page_offers_only_what_the_role_may_do(kafka_console: Console, role: Role) -> None:  # noqa: F811
    console, page = kafka_console, kafka_console.page
    job_id = await seed(console)
    pages = [
        "/console/tenants",
        TENANT,
        f"{TENANT}/jobs/{job_id}",
        f"{TENANT}/sync-log",
        f"{TENANT}/records/p-7",
        f"{TENANT}/dead-letters",
        f"{TENANT}/history",
        f"{TENANT}/diff?from=1&to=2",
        f"{TENANT}/versions/1/restore",
        f"{TENANT}/connection",
        f"{TENANT}/pairs/partners",
    ]
    await console.sign_in(await console.api.token(role, name=f"the {role.value}"))
    await expect(page.get_by_text(f"the {role.value} ({role.value})")).to_be_visible()

    offered: dict[str, set[str]] = {}
    for path in pages:
        response = await page.goto(f"{console.base}{path}")
        assert response is not None
        assert response.status == 200, f"{path}: {response.status}"
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        offered[path] = set(await page.evaluate(_SUBMITTERS, TENANT))

    allowed = OFFERED[role]
    too_much = {path: sorted(found - allowed) for path, found in offered.items() if found - allowed}
    assert not too_much, f"a {role.value} is offered buttons of forms it may not send: {too_much}"
    # And everything it may do is there to be offered (an admin, everything: the pages are not empty).
    assert set().union(*offered.values()) == allowed

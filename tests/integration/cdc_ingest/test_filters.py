"""Pair filters (``filter.soql``) where cdc-ingest reads, against the emulator process: a backfill
reads only the records the clause selects (fewer records and fewer API calls than without), and a
streamed update of a filtered object arrives with the record's current values of the clause's and
the mapping's fields, marked unchanged, so that mapping decides on the whole record."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.contract import from_proto
from tests.integration.cdc_ingest.harness import (
    CALL_OPTIONS_CLIENT,
    Harness,
    Org,
    Tenant,
    configure_tenant,
    create_org,
    in_thread,
    wait_backfilled,
)
from tests.integration.cdc_ingest.harness import tenant_document as base_document

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CUSTOMERS, PROSPECTS, PAGE = 40, 160, 25
CLAUSE = "Type = 'Customer - Direct'"


def calls_by_ingest(org: Org) -> int:
    usage: dict[str, Any] = org.admin("GET", "/usage")
    return int(usage["by_client"].get(CALL_OPTIONS_CLIENT, 0))


async def filtered_tenant(cdc: Harness, org: Org, name: str, soql: str | None) -> Tenant:
    tenant = Tenant(name, org)
    document = base_document(tenant.id, org, ["Account"])
    pair = document["spec"]["objects"][0]
    pair["fields"].append({"app": "kind", "salesforce": "Type"})
    if soql is not None:
        pair["filter"] = {"soql": soql}
    await configure_tenant(cdc.dsn, document)
    return tenant


async def backfill(cdc: Harness, tenant: Tenant, expected: int) -> tuple[int, int]:
    """(records whose snapshots were published, API calls made) by a backfill of the tenant's Accounts."""
    before = calls_by_ingest(tenant.org)

    def snapshots(changes: list[Any]) -> set[str]:
        channel = "backfill:Account"
        return {c.record_id for c in changes if c.tenant_id == tenant.id and c.source_position.channel == channel}

    async with cdc.reader() as reader, cdc.running(tenant, cdc.settings(poll_page_size=PAGE, bulk_threshold=10_000)):
        await wait_backfilled(cdc.dsn, tenant.id, 1, within=60)
        await reader.until(lambda changes: len(snapshots(changes)) >= expected, within=30)
        calls = calls_by_ingest(tenant.org) - before
    return len(snapshots(reader.changes)), calls


async def test_a_backfill_reads_only_what_the_pair_filter_selects(cdc: Harness) -> None:
    org = create_org(cdc.emulator)
    sf = org.salesforce()
    rows = [{"Name": f"Customer {i}", "Type": "Customer - Direct"} for i in range(CUSTOMERS)]
    rows += [{"Name": f"Prospect {i}", "Type": "Prospect"} for i in range(PROSPECTS)]
    await in_thread(sf.bulk2.Account.insert, records=rows, wait=0.2)

    everything, calls_without = await backfill(
        cdc, await filtered_tenant(cdc, org, "t-all", None), CUSTOMERS + PROSPECTS
    )
    filtered, calls_with = await backfill(cdc, await filtered_tenant(cdc, org, "t-filtered", CLAUSE), CUSTOMERS)

    assert (everything, filtered) == (CUSTOMERS + PROSPECTS, CUSTOMERS)
    assert calls_with < calls_without
    print(f"backfill of {CUSTOMERS + PROSPECTS} Accounts: {everything} records in {calls_without} API calls"
          f" without the filter, {filtered} in {calls_with} with it")  # fmt: skip


async def test_a_streamed_update_arrives_with_the_whole_filtered_state(cdc: Harness) -> None:
    org = create_org(cdc.emulator)
    tenant = await filtered_tenant(cdc, org, "t-stream", CLAUSE)
    sf = org.salesforce()
    async with cdc.reader() as reader, cdc.running(tenant):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        account = (await in_thread(sf.Account.create, {"Name": "Acme", "Type": "Prospect", "Phone": "1"}))["id"]
        await in_thread(sf.Account.update, account, {"Phone": "2"})
        await reader.until(lambda _: len(reader.of(account)) >= 2)

    create, update = (from_proto(m) for m in reader.of(account)[:2])
    assert create.fields["Type"] == "Prospect"
    # The event carried Phone alone; Type and Name are read to decide the filter, not changes.
    assert (update.fields["Phone"], update.fields["Type"], update.fields["Name"]) == ("2", "Prospect", "Acme")
    assert update.was_changed("Phone")
    assert not update.was_changed("Type")
    assert not update.was_changed("Name")

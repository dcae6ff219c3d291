"""A pair filter pushed into the backfill: records read, API calls and time, with and without it.

A private emulator org holds ``RECORDS`` Accounts, one in ``EVERY`` of them a direct customer.
cdc-ingest backfills them twice, in this process, for two tenants of that org: one mapping every
Account, one whose pair keeps only customers (``filter.soql``). Each run counts the snapshots it
published and the API calls its tenant made (cdc-ingest's own budget counts them), from the start of
its worker to the end of its backfill: sign-in, describes and CDC selection included, on both sides.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import asyncpg
import httpx

from bench.report import Figure, Result
from bench.stack import bench_stack, configure_tenant
from devstack.emulator import API_VERSION, EmulatorProcess, start_emulator
from services.cdc_ingest.app import run as run_cdc_ingest
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.db import migrate
from services.common.salesforce import CallBudget, UnlimitedBudget
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config.policy import PolicySettings

RECORDS = 20_000
EVERY = 10
BATCH = 200
CLAUSE = "Type = 'Customer - Direct'"
SECRETS = {"DUPLEX_SECRET_BENCH_SF": "client_secret", "DUPLEX_SECRET_BENCH_SF_PASSWORD": "password"}


def _tenant(name: str, emulator: EmulatorProcess, soql: str | None) -> dict[str, Any]:
    pair: dict[str, Any] = {
        "name": "partners",
        "app": {"object": "partners"},
        "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
        "direction": "crm_to_app",
        "fields": [{"app": "name", "salesforce": "Name"}, {"app": "kind", "salesforce": "Type"}],
    }
    if soql is not None:
        pair["filter"] = {"soql": soql}
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "password",
                    "clientId": emulator.info["client_id"],
                    "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_BENCH_SF"}},
                    "username": emulator.info["username"],
                    "password": {"secretRef": {"env": "DUPLEX_SECRET_BENCH_SF_PASSWORD"}},
                },
                "dailyApiCap": 1_000_000,
            },
            "objects": [pair],
        },
    }


async def _write(emulator: EmulatorProcess) -> None:
    token = emulator.password_token()["access_token"]
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    headers = {"Authorization": f"Bearer {token}", "Sforce-Call-Options": "client=bench"}
    url = f"/services/data/v{API_VERSION}/composite/sobjects"
    async with httpx.AsyncClient(base_url=emulator.instance_url, verify=context, headers=headers, timeout=60) as client:
        for start in range(0, RECORDS, BATCH):
            records = [
                {"attributes": {"type": "Account"}, "Name": f"Bench {i}"}
                | {"Type": "Customer - Direct" if i % EVERY == 0 else "Prospect"}
                for i in range(start, start + BATCH)
            ]
            response = await client.post(url, json={"allOrNone": True, "records": records})
            response.raise_for_status()


async def _backfill(
    dsn: str, settings: CdcIngestSettings, environ: dict[str, str], tenant: str
) -> tuple[int, int, float]:
    """(snapshots published, API calls, seconds) of ``tenant``'s backfill."""
    budget = UnlimitedBudget()

    def budget_for(_tenant_id: str) -> CallBudget:
        return budget

    started = time.monotonic()
    async with run_cdc_ingest(
        settings.model_copy(update={"tenants": (tenant,)}), environ=environ, budget_for=budget_for
    ):
        connection = await asyncpg.connect(dsn)
        try:
            for _ in range(6000):
                row = await connection.fetchrow(
                    "SELECT status, emitted FROM backfills WHERE tenant_id = $1 AND status = 'done'", tenant
                )
                if row is not None:
                    return int(row["emitted"]), budget.calls.get(tenant, 0), time.monotonic() - started
                await asyncio.sleep(0.1)
        finally:
            await connection.close()
    raise RuntimeError(f"the backfill of {tenant} did not finish")


async def _run() -> Result:
    async with bench_stack("bench-filters") as servers:
        emulator = start_emulator(servers.root / "emulator")
        try:
            await migrate(servers.dsn)
            await configure_tenant(servers.dsn, _tenant("everything", emulator, None))
            await configure_tenant(servers.dsn, _tenant("customers", emulator, CLAUSE))
            await _write(emulator)
            settings = CdcIngestSettings(
                kafka=KafkaSettings(bootstrap_servers=servers.bootstrap_servers, topic_prefix=servers.names.prefix),
                postgres=PostgresSettings(dsn=servers.dsn),
                pubsub_target=emulator.grpc_target,
                ca_file=emulator.ca_cert,
                lease_renew_seconds=0.5,
                # REST pages both times, so that the calls compare like with like.
                bulk_threshold=RECORDS,
                policy=PolicySettings(development=True),
            )
            environ = {env: str(emulator.info[key]) for env, key in SECRETS.items()}
            whole = await _backfill(servers.dsn, settings, environ, "everything")
            filtered = await _backfill(servers.dsn, settings, environ, "customers")
        finally:
            emulator.stop()
    (read_all, calls_all, seconds_all), (read_some, calls_some, seconds_some) = whole, filtered
    return Result(
        "filters",
        {"accounts": RECORDS, "matching": RECORDS // EVERY, "filter": CLAUSE, "ingestion": "REST, 2,000 per page"},
        [
            Figure("records read, without the filter", read_all, "records"),
            Figure("records read, with it", read_some, "records", target=RECORDS // EVERY, higher_is_better=False),
            Figure("API calls, without the filter", calls_all, "calls"),
            Figure("API calls, with it", calls_some, "calls", target=calls_all, higher_is_better=False),
            Figure("backfill time, without the filter", seconds_all, "s"),
            Figure("backfill time, with the filter", seconds_some, "s"),
        ],
    )


def run() -> Result:
    return asyncio.run(_run())

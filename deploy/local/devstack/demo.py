"""``make demo``: the parts of Duplex that exist today, running together on the local stack.

Starts (or reuses) the Salesforce emulator and the rate-limit-governor next to Kafka and
PostgreSQL, applies the sample tenant with the ``duplex`` CLI, then plays a short scenario against
the emulated org: Duplex writes records through the governor, someone else edits a few, and the
change stream shows which changes are Duplex's own echoes and which are real. Everything stays
running for the CLI; ``make stack-down`` stops it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import grpc
import httpx
import yaml
from duplex.governor.v1 import governor_pb2, governor_service_pb2, governor_service_pb2_grpc
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc

from devstack import processes
from devstack.emulator import ROOT, start_emulator
from devstack.health import wait_serving
from devstack.ports import pick_free_ports
from devstack.state import load_state, register_process
from services.common.salesforce import SalesforceClient, env_secrets
from services.common.tenant_config import parse_tenant_config

TENANT = "acme"
SAMPLE = ROOT / "deploy" / "examples" / "tenant-acme.yaml"
RECORDS = 1_000
OTHER_CLIENT = "sales-console"


def _alive(state_dir: Path, name: str) -> bool:
    record = load_state(state_dir).processes.get(name)
    return record is not None and record.running


def ensure_emulator(state_dir: Path) -> dict[str, Any]:
    """The emulator's start-up info, starting it (with a persistent data file) if it is not running."""
    data_dir = state_dir / "emulator"
    info_file = data_dir / "emulator.json"
    if _alive(state_dir, "salesforce-emulator") and info_file.exists():
        info: dict[str, Any] = json.loads(info_file.read_text().splitlines()[0])
        return info
    emulator = start_emulator(data_dir, "--data-file", str(data_dir / "emulator.db"))
    register_process("salesforce-emulator", emulator.process.pid, state_dir=state_dir)
    return emulator.info


def ensure_governor(state_dir: Path, dsn: str) -> int:
    """The rate-limit-governor's port, starting it if it is not running."""
    port_file = state_dir / "governor.port"
    if _alive(state_dir, "rate-limit-governor") and port_file.exists():
        return int(port_file.read_text())
    (port,) = pick_free_ports(1)
    env = {**os.environ, "POSTGRES_DSN": dsn, "GOVERNOR_PORT": str(port)}
    child = processes.spawn(
        [sys.executable, "-m", "services.rate_limit_governor"], log_file=state_dir / "governor.log", env=env, cwd=ROOT
    )
    register_process("rate-limit-governor", child.pid, state_dir=state_dir)
    port_file.write_text(str(port))
    wait_serving(f"127.0.0.1:{port}", state_dir / "governor.log")
    return port


def tenant_document(info: dict[str, Any]) -> dict[str, Any]:
    """The sample tenant, pointed at the emulator and logging in as its integration user."""
    document: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    salesforce = document["spec"]["salesforce"]
    salesforce["instanceUrl"] = info["instance_url"]
    salesforce["loginUrl"] = info["login_url"]
    salesforce["auth"] = {
        "mode": "password",
        "clientId": info["client_id"],
        "clientSecret": {"secretRef": {"env": "DEMO_SF_CLIENT_SECRET"}},
        "username": "integration@acme.example",
        "password": {"secretRef": {"env": "DEMO_SF_PASSWORD"}},
    }
    return document


class GovernorBudget:
    """Asks the governor before each call and reports Salesforce's usage back (the CallBudget seam)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.denied = 0

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        priority = governor_pb2.CALL_PRIORITY_BACKFILL if backfill else governor_pb2.CALL_PRIORITY_LIVE
        request = governor_service_pb2.AcquireCallsRequest(tenant_id=tenant_id, calls=calls, priority=priority)
        while not (grant := await self._stub.AcquireCalls(request)).granted:
            self.denied += 1
            await asyncio.sleep(min(5.0, max(0.05, grant.not_before.ToDatetime().timestamp() - time.time())))

    async def report(self, tenant_id: str, used: int, limit: int) -> None:
        await self._stub.ReportUsage(governor_service_pb2.ReportUsageRequest(tenant_id=tenant_id, used=used, max=limit))


def say(step: str, text: str) -> None:
    print(f"{step:>4}  {text}", flush=True)


async def scenario(info: dict[str, Any], governor_port: int) -> None:
    ca = ssl.create_default_context(cafile=info["ca_cert"])
    document = tenant_document(info)
    config = parse_tenant_config(document)
    secrets = env_secrets(
        {"DEMO_SF_CLIENT_SECRET": info["client_secret"], "DEMO_SF_PASSWORD": "acme-integration-password"}
    )
    async with (
        httpx.AsyncClient(verify=ca, timeout=60) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{governor_port}") as channel,
    ):
        governor = governor_service_pb2_grpc.RateLimitGovernorServiceStub(channel)
        budget = GovernorBudget(governor)
        sf = SalesforceClient(TENANT, config.spec.salesforce, secrets=secrets, budget=budget, http=http)
        tag = uuid.uuid4().hex[:6]

        started = time.perf_counter()
        ids: list[str] = []
        for start in range(0, RECORDS, 200):
            records = [
                {"attributes": {"type": "Account"}, "Name": f"Partner {tag}-{i:04d}", "Duplex_Id__c": f"dx-{tag}-{i}"}
                for i in range(start, start + 200)
            ]
            response = await sf.request("POST", f"{sf.api_base}/composite/sobjects", json={"records": records})
            ids += [r["id"] for r in response.json()]
        seconds = time.perf_counter() - started
        say(
            "4.",
            f"Duplex wrote {len(ids):,} Accounts in {RECORDS // 200} API calls ({len(ids) / seconds:,.0f} records/s)",
        )

        # Someone else (a sales rep in Salesforce's UI, say) edits a few of them.
        token = (
            await http.post(
                f"{info['instance_url']}/services/oauth2/token",
                data={
                    "grant_type": "password",
                    "client_id": info["client_id"],
                    "client_secret": info["client_secret"],
                    "username": info["username"],
                    "password": info["password"],
                },
            )
        ).json()["access_token"]
        edited = ids[:10]
        for record_id in edited:
            await http.patch(
                f"{info['instance_url']}{sf.api_base}/sobjects/Account/{record_id}",
                json={"BillingCity": "Lyon", "Phone": None},
                headers={"Authorization": f"Bearer {token}", "Sforce-Call-Options": f"client={OTHER_CLIENT}"},
            )
        say("5.", f"a sales rep edited {len(edited)} of them in Salesforce (client={OTHER_CLIENT})")

        echoes, genuine, example = await read_changes(info, token, set(ids), config.spec.salesforce.call_options_client)
        say("6.", f"CDC over Pub/Sub: {echoes:,} events are Duplex's own writes (echoes it will drop),")
        say("", f"{genuine} are real changes to sync; e.g. {example}")

        b = (await governor.GetBudget(governor_service_pb2.GetBudgetRequest(tenant_id=TENANT))).budget
        say(
            "7.",
            f"API budget for '{TENANT}': {b.granted_24h} calls granted in 24 h, "
            f"{b.remaining:,} left of {b.daily_cap:,};",
        )
        say("", f"the org has used {b.org_used:,} of {b.org_max:,} calls (everyone's, from Sforce-Limit-Info)")


async def read_changes(info: dict[str, Any], token: str, ids: set[str], duplex_client: str) -> tuple[int, int, str]:
    """Subscribe to Account changes and sort this scenario's events into Duplex's echoes and real changes."""
    credentials = grpc.ssl_channel_credentials(await asyncio.to_thread(Path(info["ca_cert"]).read_bytes))
    metadata = (("accesstoken", token), ("instanceurl", info["instance_url"]), ("tenantid", info["org_id"]))
    topic = "/data/AccountChangeEvent"
    expected = len(ids) + 10  # every create, and the sales rep's ten updates
    requests: asyncio.Queue[pb.FetchRequest] = asyncio.Queue()
    await requests.put(pb.FetchRequest(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=100))

    async def outgoing() -> Any:
        while True:
            yield await requests.get()

    echoes = genuine = 0
    example = ""
    schemas: dict[str, Any] = {}
    async with grpc.aio.secure_channel(info["grpc"], credentials) as channel:
        stub = pb_grpc.PubSubStub(channel)
        call = stub.Subscribe(outgoing(), metadata=metadata)
        async for response in call:
            for consumed in response.events:
                schema_id = consumed.event.schema_id
                if schema_id not in schemas:
                    schema = await stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=metadata)
                    schemas[schema_id] = fastavro.parse_schema(json.loads(schema.schema_json))
                event: Any = fastavro.schemaless_reader(io.BytesIO(consumed.event.payload), schemas[schema_id], None)
                header = event["ChangeEventHeader"]
                if not ids.intersection(header["recordIds"]):
                    continue
                if f"client={duplex_client}" in header["changeOrigin"]:
                    echoes += 1
                else:
                    genuine += 1
                    example = example or (
                        f"{header['changeType']} of {header['recordIds'][0]} by {header['changeOrigin'].split(';')[-1]}"
                        f" (BillingCity now {event['BillingAddress']['City']!r})"
                    )
            if echoes + genuine >= expected:
                break
            if response.events and response.pending_num_requested == 0:
                await requests.put(pb.FetchRequest(topic_name=topic, num_requested=100))
        call.cancel()
    return echoes, genuine, example


def run(state_dir: Path) -> int:
    state = load_state(state_dir)
    if not state.dsn or not _alive(state_dir, "kafka") or not _alive(state_dir, "postgres"):
        print("the stack is not running: run `make stack-up` (or `make demo`, which does it)", file=sys.stderr)
        return 1
    print("Duplex demo: the foundation and the Salesforce emulator (the sync services land next)\n")
    say("1.", f"Kafka {state.bootstrap_servers} and PostgreSQL 127.0.0.1:{state.postgres_port} are up")
    info = ensure_emulator(state_dir)
    say("2.", f"Salesforce emulator: {info['instance_url']} (org {info['org_id']}), Pub/Sub on {info['grpc']}")
    governor_port = ensure_governor(state_dir, state.dsn)
    say("", f"rate-limit-governor: 127.0.0.1:{governor_port}")
    tenant_file = state_dir / "demo" / "tenant-acme.yaml"
    tenant_file.parent.mkdir(parents=True, exist_ok=True)
    tenant_file.write_text(yaml.safe_dump(tenant_document(info), sort_keys=False))
    applied = subprocess.run(
        [sys.executable, "-m", "services.admin", "config", "apply", "-f", str(tenant_file)],
        env={**os.environ, "POSTGRES_DSN": state.dsn},
        capture_output=True,
        text=True,
        check=False,
    )
    if applied.returncode != 0:
        print(applied.stderr, file=sys.stderr)
        return applied.returncode
    say("3.", f"duplex config apply -f {tenant_file.relative_to(ROOT)}: {applied.stdout.strip()}")
    asyncio.run(scenario(info, governor_port))
    print(
        "\nThe stack is still running:\n"
        f"  set -a; . {state_dir / 'stack.env'}; set +a\n"
        f"  .venv/bin/duplex config show {TENANT}        # the applied configuration\n"
        f"  .venv/bin/duplex tenants list\n"
        f"  curl --cacert {info['ca_cert']} {info['instance_url']}/services/data/   # the emulated org\n"
        "  make stack-down                             # stop everything"
    )
    return 0

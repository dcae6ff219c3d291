"""``make demo``: the whole of Duplex running on the local stack, on the sample tenant, end to end.

Starts (or reuses) the Salesforce emulator and every service as its own process (through
:mod:`devstack.pipeline`), applies the sample tenant with the ``duplex`` CLI, seeds both sides,
lets the initial sync run, then plays a short live scenario. Every figure printed is measured:
read from the sync log, the services' metrics, the governor, the emulated org or the app's tables
(never derived from what the demo meant to do). Everything stays running for the CLI;
``make stack-down`` stops it. A second run reuses what runs and tags its records with a new run id.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import yaml
from duplex.governor.v1 import governor_service_pb2, governor_service_pb2_grpc

from devstack.connect import (
    DEMO_APP_SECRET,
    ConnectedApp,
    ConnectError,
    connect,
    connection,
    register_connected_app,
)
from devstack.demo_org import REP_CLIENT, SalesRep
from devstack.emulator import ROOT, start_emulator
from devstack.pipeline import Pipeline, PipelineConfig, ServiceNotHealthyError
from devstack.state import load_state, register_process
from examples.partners_app import app as partners

TENANT = "acme"
SAMPLE = ROOT / "deploy" / "examples" / "tenant-acme.yaml"
APP_PARTNERS = 2_000
CRM_ACCOUNTS = 1_000
# The variable the demo tenant's clientSecret secretRef names (under the deployment's secret prefix).
SECRET_ENV = "DUPLEX_SECRET_DEMO_SF_CLIENT_SECRET"


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


def tenant_document(info: dict[str, Any], app: ConnectedApp) -> dict[str, Any]:
    """The sample tenant as it ships (auth mode oauth_pkce), pointed at the emulator and the demo's connected app."""
    document: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    salesforce = document["spec"]["salesforce"]
    salesforce["instanceUrl"] = info["instance_url"]
    salesforce["loginUrl"] = info["login_url"]
    salesforce["auth"]["clientId"] = app.client_id
    salesforce["auth"]["clientSecret"] = {"secretRef": {"env": SECRET_ENV}}
    return document


def pipeline_for(state_dir: Path, info: dict[str, Any]) -> Pipeline:
    state = load_state(state_dir)
    assert state.bootstrap_servers is not None
    assert state.dsn is not None
    return Pipeline(
        PipelineConfig(
            state_dir=state_dir,
            bootstrap_servers=state.bootstrap_servers,
            dsn=state.dsn,
            topic_prefix=state.topic_prefix,
            pubsub_target=info["grpc"],
            ca_file=info["ca_cert"],
            tenants=(TENANT,),
            secrets={SECRET_ENV: DEMO_APP_SECRET},
            vault_keys=state.vault_keys,
            app_tenant=TENANT,
        )
    )


def admin_token(state_dir: Path, dsn: str, admin_url: str) -> Path:
    """A file holding an admin API token: kept from an earlier run while the API still accepts it.

    The first token of a deployment can only come from local bootstrap (``duplex tokens create
    --bootstrap`` with the database's DSN); everything after that goes through the API with it.
    """
    path = state_dir / "demo" / "admin-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        headers = {"Authorization": f"Bearer {path.read_text().strip()}"}
        if httpx.get(f"{admin_url}/api/v1/tenants", headers=headers, timeout=10, trust_env=False).status_code == 200:
            return path
    created = subprocess.run(
        [sys.executable, "-m", "services.admin", "tokens", "create", "--bootstrap", "--name=demo", "--role=admin"],
        env={**os.environ, "POSTGRES_DSN": dsn},
        capture_output=True,
        text=True,
        check=True,
    )
    # Readable by its owner only, as the CLI requires of a token file.
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(created.stdout.strip() + "\n")
    return path


@dataclass(frozen=True)
class Cli:
    """``duplex`` against the admin API, as an operator runs it."""

    server: str
    token_file: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DUPLEX_SERVER": self.server, "DUPLEX_TOKEN_FILE": str(self.token_file)}
        env.pop("DUPLEX_TOKEN", None)
        return subprocess.run(
            [sys.executable, "-m", "services.admin", *args], env=env, capture_output=True, text=True, check=False
        )


def say(step: str, text: str = "") -> None:
    print(f"{step:>4}  {text}", flush=True)


async def until(check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.1) -> float:
    """Seconds until ``check()`` holds (to within ``every``); raises TimeoutError naming ``what``.

    Checks that read Salesforce cost an API call each (they count in the org's usage), so they
    poll every 0.1 s; checks of the app's own table poll faster.
    """
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > within:
            raise TimeoutError(f"{what}: not done after {within:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - began


# --------------------------------------------------------------------------- measuring


@dataclass
class Budget:
    granted_24h: int
    remaining: int
    daily_cap: int
    org_used: int
    org_max: int


async def budget(governor_target: str) -> Budget:
    async with grpc.aio.insecure_channel(governor_target) as channel:
        stub = governor_service_pb2_grpc.RateLimitGovernorServiceStub(channel)
        b = (await stub.GetBudget(governor_service_pb2.GetBudgetRequest(tenant_id=TENANT))).budget
    return Budget(b.granted_24h, b.remaining, b.daily_cap, b.org_used, b.org_max)


@dataclass
class SyncLog:
    """The sync log's rows for the tenant since the run began."""

    rows: list[asyncpg.Record] = field(default_factory=list)

    @classmethod
    async def since(cls, conn: Any, at: datetime) -> SyncLog:
        rows = await conn.fetch(
            "SELECT id, at, service, event, link_id, record_id, code, message, detail"
            " FROM sync_log WHERE tenant_id = $1 AND at >= $2 ORDER BY id",
            TENANT,
            at,
        )
        return cls(list(rows))

    def events(self, name: str, service: str | None = None) -> list[asyncpg.Record]:
        return [r for r in self.rows if r["event"] == name and (service is None or r["service"] == service)]


def _detail(row: asyncpg.Record) -> dict[str, Any]:
    value = row["detail"]
    return json.loads(value) if isinstance(value, str) else dict(value or {})


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    state_dir: Path
    info: dict[str, Any]
    pipeline: Pipeline
    dsn: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    began: datetime = field(default_factory=lambda: datetime.now(UTC))
    latencies: dict[str, float] = field(default_factory=dict)
    # API calls the org counted during the run, per Sforce-Call-Options client.
    calls: dict[str, int] = field(default_factory=dict)


async def link_of(conn: Any, *, app_id: str | None = None, crm_id: str | None = None) -> asyncpg.Record | None:
    if app_id is not None:
        return await conn.fetchrow(
            "SELECT * FROM links WHERE tenant_id = $1 AND object_pair = 'partners' AND app_record_id = $2",
            TENANT,
            app_id,
        )
    return await conn.fetchrow(
        "SELECT * FROM links WHERE tenant_id = $1 AND object_pair = 'partners' AND crm_record_id = $2", TENANT, crm_id
    )


def partner_rows(tag: str, count: int) -> list[dict[str, Any]]:
    statuses, tiers = ("active", "onboarding", "suspended"), ("gold", "silver", "bronze", "trial")
    industries = (["software"], ["services"], ["software", "hardware"])
    return [
        {
            "name": f"Partner {tag}-{i:04d}",
            "website": f"https://partner-{tag}-{i}.example",
            "phone": f"+33 1 {i:04d} {tag[:4]}",
            "status": statuses[i % 3],
            "tier": tiers[i % 4],
            "industries": industries[i % 3],
            "partner_since": date(2020 + i % 5, 1 + i % 12, 1 + i % 28),
            "notes": f"imported by demo run {tag}",
        }
        for i in range(count)
    ]


def account_rows(tag: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "Name": f"Account {tag}-{i:04d}",
            "Website": f"https://account-{tag}-{i}.example",
            "Phone": f"+1 415 {i:04d}",
            "Partner_Status__c": "Active",
            "Industries__c": "Software;Services",
            "AnnualRevenue": 100_000 + i,
            "NumberOfEmployees": 10 + i,
        }
        for i in range(count)
    ]


async def scenario(run: Run) -> int:
    tag, info = run.tag, run.info
    conn = await asyncpg.connect(run.dsn)
    async with SalesRep(info) as rep:
        try:
            return await _scenario(run, tag, conn, rep)
        finally:
            await conn.close()


async def _scenario(run: Run, tag: str, conn: Any, rep: SalesRep) -> int:
    governor = run.pipeline.governor_target
    before = await budget(governor)
    calls_before = await rep.usage_by_client()
    first_run = await conn.fetchval("SELECT count(*) FROM replay_checkpoints WHERE tenant_id = $1", TENANT) == 0

    # ---- seed both sides
    began = time.monotonic()
    crm_ids = await rep.create("Account", account_rows(tag, CRM_ACCOUNTS))
    say("4.", f"a sales rep created {len(crm_ids):,} Accounts in Salesforce (run {tag}, client={REP_CLIENT})")
    await partners.migrate(conn)
    app_ids = await partners.create_partners(conn, partner_rows(tag, APP_PARTNERS))
    say("", f"the partners app imported {len(app_ids):,} partners (its outbox publishes them to app-changes)")

    # ---- cdc-ingest last: on a tenant's first connection it backfills what Salesforce already holds.
    await run.pipeline.start(["cdc-ingest"])

    async def app_side_done() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM partners_app.partners WHERE name LIKE $1",
            f"Account {tag}-%",
        )
        return int(n) >= CRM_ACCOUNTS

    async def crm_side_done() -> bool:
        return await rep.count(f"Name LIKE 'Partner {tag}-%'") >= APP_PARTNERS

    try:
        to_crm = await until(crm_side_done, within=600, what=f"{APP_PARTNERS} partners in Salesforce")
        to_app = await until(app_side_done, within=600, what=f"{CRM_ACCOUNTS} Accounts in the partners app")
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seeded = time.monotonic() - began
    say("5.", f"initial sync done in {seeded:.1f}s: {APP_PARTNERS:,} partners in Salesforce after {to_crm:.1f}s,")
    say("", f"{CRM_ACCOUNTS:,} Accounts in the partners app after {to_app + to_crm:.1f}s")
    backfills = await conn.fetch(
        "SELECT object, status, method, emitted, started_at FROM backfills WHERE tenant_id = $1 ORDER BY object",
        TENANT,
    )
    for b in backfills:
        when = "this run" if b["started_at"] >= run.began else f"an earlier run ({b['started_at']:%Y-%m-%d %H:%M} UTC)"
        say("", f"backfill of {b['object']}: {b['status']}, {b['emitted']:,} records read by {b['method']} in {when}")
    if not first_run:
        say("", "(the tenant was already connected, so this run's Accounts arrived through CDC, not a backfill)")

    # ---- live scenario
    say("6.", "live edits:")
    await live_edits(run, conn, rep, app_ids, crm_ids)
    after = await budget(governor)
    calls = await rep.usage_by_client()
    run.calls = {client: n - calls_before.get(client, 0) for client, n in calls.items()}
    await report(run, conn, before, after, rep)
    return 0


async def live_edits(run: Run, conn: Any, rep: SalesRep, app_ids: list[str], crm_ids: list[str]) -> None:
    tag = run.tag
    # (a) an edit in the app reaches Salesforce
    link = await link_of(conn, app_id=app_ids[0])
    assert link is not None
    crm_of_app0 = link["crm_record_id"]
    phone = f"+33 6 {tag}"
    await partners.edit_partner(conn, app_ids[0], {"phone": phone})

    async def phone_in_crm() -> bool:
        record = await rep.get("Account", crm_of_app0)
        return record is not None and record.get("Phone") == phone

    run.latencies["app → Salesforce"] = await until(phone_in_crm, within=60, what="app edit in Salesforce")
    say(
        "",
        f"a. app user changed partner {app_ids[0]}'s phone; Salesforce {crm_of_app0} had it "
        f"{run.latencies['app → Salesforce']:.2f}s later",
    )

    # (b) an edit in Salesforce reaches the app
    link = await link_of(conn, crm_id=crm_ids[0])
    assert link is not None
    app_of_crm0 = link["app_record_id"]
    website = f"https://{tag}.example/new"
    await rep.update("Account", crm_ids[0], {"Website": website})

    async def website_in_app() -> bool:
        value = await conn.fetchval("SELECT website FROM partners_app.partners WHERE id = $1", app_of_crm0)
        return bool(value == website)

    run.latencies["Salesforce → app"] = await until(
        website_in_app, within=60, what="Salesforce edit in the app", every=0.02
    )
    say(
        "",
        f"b. sales rep changed Account {crm_ids[0]}'s website; partner {app_of_crm0} had it "
        f"{run.latencies['Salesforce → app']:.2f}s later",
    )

    # (c) the same fields edited on both sides at once: name is newest_wins, status app_wins
    link = await link_of(conn, app_id=app_ids[1])
    assert link is not None
    crm_of_app1 = link["crm_record_id"]
    app_name, crm_name = f"Partner {tag} (renamed in app)", f"Partner {tag} (renamed in Salesforce)"
    await partners.edit_partner(conn, app_ids[1], {"name": app_name, "status": "suspended"})
    await rep.update("Account", crm_of_app1, {"Name": crm_name, "Partner_Status__c": "Active"})

    async def converged() -> bool:
        record = await rep.get("Account", crm_of_app1)
        row = await conn.fetchrow("SELECT name, status FROM partners_app.partners WHERE id = $1", app_ids[1])
        return (
            record is not None
            and row is not None
            and record["Name"] == row["name"]
            and (record.get("Partner_Status__c") or "").lower() == row["status"]
        )

    await until(converged, within=60, what="both sides agreeing after the conflict")
    record = await rep.get("Account", crm_of_app1)
    assert record is not None
    say("", f"c. partner {app_ids[1]} renamed in the app and in Salesforce at the same moment, and its status")
    say("", f"   changed on both sides: both now read name {record['Name']!r}, status {record['Partner_Status__c']!r}")

    # (d) a delete in Salesforce: partners use soft_delete, so the app's partner is archived
    link = await link_of(conn, crm_id=crm_ids[1])
    assert link is not None
    await rep.delete("Account", crm_ids[1])

    async def archived() -> bool:
        value = await conn.fetchval("SELECT archived FROM partners_app.partners WHERE id = $1", link["app_record_id"])
        return bool(value)

    run.latencies["delete → archived"] = await until(
        archived, within=60, what="the delete reaching the app", every=0.02
    )
    say(
        "",
        f"d. sales rep deleted Account {crm_ids[1]}; partner {link['app_record_id']} archived "
        f"{run.latencies['delete → archived']:.2f}s later (deletePolicy: soft_delete)",
    )

    # (e) a value Salesforce refuses: the app allows a partner without a name, Salesforce requires
    # an Account Name. Duplex writes it anyway (it does not second-guess the org) and records the reject.
    nameless = await partners.create_partner(
        conn, {"name": "", "status": "active", "website": f"https://{tag}.invalid"}
    )
    began = datetime.now(UTC)

    async def rejected() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM sync_log s JOIN links l ON l.tenant_id = s.tenant_id AND l.link_id = s.link_id"
                " WHERE s.tenant_id = $1 AND s.event = 'write.rejected' AND l.app_record_id = $2 AND s.at >= $3",
                TENANT,
                nameless,
                began,
            )
        )

    run.latencies["app → Salesforce reject"] = await until(rejected, within=60, what="Salesforce's reject", every=0.02)
    say(
        "",
        f"e. app user created partner {nameless} without a name; Salesforce's refusal was in the sync log "
        f"{run.latencies['app → Salesforce reject']:.2f}s later",
    )


async def report(run: Run, conn: Any, before: Budget, after: Budget, rep: SalesRep) -> None:
    log = await SyncLog.since(conn, run.began)
    written = log.events("write.succeeded", "writer")
    records_to_crm = sum(int(_detail(r).get("count", 0)) for r in written)
    created_in_crm = sum(int(_detail(r).get("created", 0)) for r in written)
    resolved = log.events("change.resolved")
    to_app = sum(1 for r in resolved if "app" in (_detail(r).get("writes") or {}))
    echoes: Counter[tuple[Any, Any]] = Counter()
    for r in log.events("echoes.dropped"):
        echoes[(_detail(r).get("side"), _detail(r).get("echo"))] += int(_detail(r).get("count", 0))
    conflicts = log.events("conflict.decided")
    rejects = log.events("write.rejected", "writer")
    app_ids = dict(
        await conn.fetch(
            "SELECT link_id, app_record_id FROM links WHERE tenant_id = $1 AND link_id = ANY($2::text[])",
            TENANT,
            [r["link_id"] for r in rejects],
        )
    )
    print()
    say("7.", "what Duplex did in this run (from the sync log):")
    say(
        "",
        f"records written to Salesforce: {records_to_crm:,} ({created_in_crm:,} created) in {len(written):,} batches",
    )
    say("", f"changes sent to the partners app (app-updates): {to_app:,}")
    say(
        "",
        f"echoes suppressed: {sum(echoes.values()):,} ("
        + ", ".join(f"{n:,} from {side} by {why}" for (side, why), n in echoes.most_common())
        + ")",
    )
    say("", f"conflicts decided: {len(conflicts)}")
    for c in conflicts:
        say("", f"  {c['message']} [{c['code']}]")
    say("", f"rejected by Salesforce: {len(rejects)}")
    for r in rejects:
        say("", f"  partner {app_ids.get(r['link_id'], r['link_id'])}: {r['code']} ({r['message']})")
    say(
        "",
        f"sync log rows: {len(log.rows):,}; by event: "
        + ", ".join(f"{e} {n:,}" for e, n in Counter(r["event"] for r in log.rows).most_common()),
    )
    print()
    client = yaml.safe_load(SAMPLE.read_text())["spec"]["salesforce"]["callOptionsClient"]
    governed = after.granted_24h - before.granted_24h
    say(
        "8.",
        f"API calls Duplex made in this run: {run.calls.get(client, 0):,} (the org's count for client={client});",
    )
    say(
        "",
        f"{governed:,} of them were granted by the rate-limit-governor (the writer and cdc-ingest ask it);"
        f" budget left today: {after.remaining:,} of {after.daily_cap:,}",
    )
    org_used, org_max = await rep.usage()
    say(
        "",
        f"the sales rep and this demo's checks made {run.calls.get(REP_CLIENT, 0):,}; "
        f"the org has used {org_used:,} of {org_max:,} calls in 24 h (everyone's, /limits)",
    )
    say("9.", "end-to-end latency (edit committed → visible on the other side, measured by polling):")
    for what, seconds in run.latencies.items():
        say("", f"  {what}: {seconds:.2f}s")


def run(state_dir: Path) -> int:
    state = load_state(state_dir)
    if not state.dsn or not _alive(state_dir, "kafka") or not _alive(state_dir, "postgres"):
        print("the stack is not running: run `make stack-up` (or `make demo`, which does it)", file=sys.stderr)
        return 1
    print("Duplex demo: two-way sync of a partner directory with Salesforce, every service a process\n")
    say("1.", f"Kafka {state.bootstrap_servers} and PostgreSQL 127.0.0.1:{state.postgres_port} are up")
    info = ensure_emulator(state_dir)
    say("", f"Salesforce emulator: {info['instance_url']} (org {info['org_id']}), Pub/Sub on {info['grpc']}")

    async def prepare() -> None:
        async with SalesRep(info) as rep:
            await rep.define_fields()

    asyncio.run(prepare())
    pipeline = pipeline_for(state_dir, info)
    try:
        asyncio.run(pipeline.start(["admin"]))
        token_file = admin_token(state_dir, state.dsn, pipeline.admin_url)
        app = asyncio.run(register_connected_app(info, pipeline.admin_url))
    except (ServiceNotHealthyError, ConnectError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    say("2.", f"admin API {pipeline.admin_url}, token in {token_file.relative_to(ROOT)}; connected app {app.client_id}")
    say("", f"console {pipeline.admin_url}/console (sign in with that token)")
    tenant_file = state_dir / "demo" / "tenant-acme.yaml"
    tenant_file.write_text(yaml.safe_dump(tenant_document(info, app), sort_keys=False))
    cli = Cli(pipeline.admin_url, token_file)
    applied = cli("config", "apply", "-f", str(tenant_file))
    if applied.returncode != 0:
        print(applied.stdout + applied.stderr, file=sys.stderr)
        return applied.returncode
    say("", f"duplex config apply -f {tenant_file.relative_to(ROOT)}: {applied.stdout.strip()}")
    try:
        org = asyncio.run(connection(pipeline.admin_url, token_file.read_text().strip(), TENANT))
        # The emulator may have restarted on another port since: a session for the old one is no use.
        if org["status"] == "connected" and org["instanceUrl"] == info["instance_url"]:
            say("", f"already connected: org {org['orgId']} as {org['username']} since {org['connectedAt']}")
        else:
            org = asyncio.run(connect(pipeline.admin_url, token_file.read_text().strip(), TENANT, info))
            if org["status"] != "connected":
                print(f"error: the connect flow ended {org['status']}: {org['lastError']}", file=sys.stderr)
                return 1
            say("", f"connected org {org['orgId']} as {org['username']} (OAuth 2.0 web-server flow with PKCE;")
            say("", "the refresh token is in the vault, encrypted; the demo played the browser's part)")
    except ConnectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    began = time.monotonic()
    try:
        started = asyncio.run(pipeline.start([n for n in pipeline.services if n not in ("admin", "cdc-ingest")]))
    except ServiceNotHealthyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    reused = [n for n in pipeline.services if n not in ("admin", "cdc-ingest") and n not in started]
    say(
        "3.",
        f"services: started {', '.join(started) or 'none'}; reused {', '.join(reused) or 'none'} "
        f"({time.monotonic() - began:.1f}s)",
    )
    demo = Run(state_dir, info, pipeline, state.dsn)
    try:
        status = asyncio.run(scenario(demo))
    except (TimeoutError, ServiceNotHealthyError) as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"logs: {pipeline.config.directory}/<service>.log", file=sys.stderr)
        return 1
    if status != 0:
        print(f"logs: {pipeline.config.directory}/<service>.log", file=sys.stderr)
        return status
    print(
        "\nEverything is still running (python -m devstack status):\n"
        f"  export DUPLEX_SERVER={pipeline.admin_url} DUPLEX_TOKEN_FILE={token_file}\n"
        f"  .venv/bin/duplex config show {TENANT}        # the applied configuration\n"
        f"  .venv/bin/duplex connection status {TENANT}  # org, user, last token refresh\n"
        f"  .venv/bin/duplex connection check {TENANT}   # preflight: permissions, fields, CDC selection\n"
        f"  .venv/bin/duplex tenants list\n"
        f"  tail -f {pipeline.config.directory}/writer.log     # each service logs to var/pipeline/<name>.log\n"
        "  make demo                                   # again: new records, same services\n"
        "  make stack-down                             # stop everything"
    )
    return status

"""The console's server time with 50 tenants and 1,000,000 sync-log rows (issue #17).

A private PostgreSQL (no Kafka: no page timed here reads dead letters), migrated. Fifty tenants are
the sample ``deploy/examples/tenant-acme.yaml`` under fifty names, each applied as three versions
(its daily cap raised twice), with the links of their records, described Account and Contact
objects and declared app objects, jobs (finished, and some waiting or running), a pause of one
direction for some, and the governor's budget ledger (a bucket per minute of the last day). The
sync log gets 1,000,000 rows over the last 30 days, in time order, every tenant's interleaved as
the services append them, in the day partitions retention keeps (``deploy/sql/0018``). Tenants are
not equally busy: tenant k's share goes as 1/sqrt(k + 1), so the busiest holds about 8 % of the
rows and the quietest about 1 %. Rows are what the services write, in shares assumed for a busy
deployment (``EVENTS``): resolved changes with their field decisions and writes (some held by a pause;
an update to the app with its lag), conflicts, the writer's per-batch successes (with their lag) and
supersessions, rejected writes with Salesforce's codes (logged by the writer and by the
conflict-resolver), echoes counted per batch, changes
refused, dropped or leaving a filter, and the tenant's news (quarantines, budget warnings,
connection errors). A record's rows go as the square of a uniform draw over the tenant's links,
so a few records are busy and most are quiet. Then ANALYZE.

The admin app runs in this process (:func:`services.admin.app.run`) and an httpx ASGI client asks
for each page signed in with an admin token's console cookie: the server time of a request is from
sending it to holding the whole response, with no network in between (the console's own calls to
the API go through its in-process ASGI client too). Every page is asked for a few times to warm up,
then ``REQUESTS`` times one after another; the figures are the 95th percentile against the target,
with the median beside it in the notes. Pages of one tenant are those of the busiest; the record
is that tenant's busiest. Two sync-log filters beyond the issue's list (one pair, status info) are
timed too: they read more of the log than a page. PostgreSQL and the app share this machine's cores.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import yaml

from bench.report import Figure, Result
from bench.stack import percentile
from devstack.ports import pick_free_ports
from devstack.postgres import PostgresServer
from services.admin.app import run as run_admin
from services.admin.auth import Role
from services.admin.config_store import ConfigStore
from services.admin.console.web import COOKIE
from services.admin.settings import AdminSettings
from services.admin.token_store import TokenStore
from services.common.db import migrate
from services.common.salesforce import env_secrets
from services.common.schema import AppField, AppObject, CrmField, CrmObject, PicklistValue
from services.common.schema_store import declare_app_object, save_described
from services.common.tenant_config import FieldType, parse_tenant_config
from services.common.tenant_config.policy import PolicySettings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "deploy" / "examples" / "tenant-acme.yaml"
TENANTS = 50
ROWS = 1_000_000
DAYS = 30
# Daily caps of each tenant's three versions.
CAPS = (5000, 6000, 8000)
REQUESTS = 20
WARM_UP = 3
TARGET_MS = 300.0
# Every how many tenants one is paused (to the app, partners), and one has a pair quarantined now.
PAUSED_EVERY = 7
QUARANTINED_EVERY = 10
SEED = 0.17

# What the services log, with the share of rows each makes (of the generated rows; the tenants'
# news is added apart): event, the service writing it, share.
EVENTS: tuple[tuple[str, str, float], ...] = (
    ("change.resolved", "conflict-resolver", 0.50),
    ("conflict.decided", "conflict-resolver", 0.06),
    ("write.succeeded", "writer", 0.15),
    ("record.created", "conflict-resolver", 0.02),
    ("write.rejected", "writer", 0.02),
    ("write.rejected", "conflict-resolver", 0.02),
    ("echoes.dropped", "conflict-resolver", 0.14),
    ("change.rejected", "mapping", 0.02),
    ("change.left_filter", "mapping", 0.02),
    ("change.dropped", "mapping", 0.02),
    ("write.superseded", "writer", 0.02),
    ("cdc.undecodable", "cdc-ingest", 0.01),
)
assert math.isclose(sum(share for *_, share in EVENTS), 1.0)

# Salesforce's codes of rejected writes, the frequent ones repeated, with their messages.
REJECTIONS = (
    ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Partner status must be Active before the tier can be Gold", "Tier__c"),
    ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Partner status must be Active before the tier can be Gold", "Tier__c"),
    ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Partner status must be Active before the tier can be Gold", "Tier__c"),
    ("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", "LastName"),
    ("STRING_TOO_LONG", "Website: data value too large", "Website"),
    ("INVALID_EMAIL_ADDRESS", "Email: invalid email address", "Email"),
    ("DUPLICATE_VALUE", "duplicate value found: Duplex_Id__c duplicates value on another record", "Duplex_Id__c"),
    ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", ""),
    ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", "ParentId"),
)
MAPPING_REFUSALS = (
    ("INVALID_VALUE", "status: 'archived' is not in the picklist's value map"),
    ("INVALID_VALUE", "partner_since: '31/02/2024' is not a date"),
    ("INVALID_CHANGE", "missing record_id"),
    ("RECORD_TOO_LARGE", "the change is larger than the topic takes"),
)
POLICIES = ("newest_wins", "newest_wins", "app_wins", "crm_wins", "crm_unless_blank", "app_unless_blank")


def _sql_array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pick(values: Sequence[str], draw: str) -> str:
    """SQL choosing one of ``values`` by the uniform draw ``draw`` (0 to 1)."""
    return f"({_sql_array(values)})[1 + floor({draw} * {len(values)})::int]"


# One day's rows for every tenant, in time order. $1: the day (0: the last 24 hours), $2: how many.
# bench_tenants holds each tenant's share of the draw [lo, hi), its links and its pause; ev picks the
# event from bench_events, rec the record (squared: a few busy records), x and y the details.
_DAY = f"""
WITH draws AS (
    SELECT now() - ($1::int + random()) * interval '1 day' AS at,
           random() AS pick, random() AS ev, random() AS rec, random() AS x, random() AS y
    FROM generate_series(1, $2)
    OFFSET 0
), keyed AS (
    SELECT d.at, d.x, d.y, t.name AS tenant_id, t.paused_since, e.event, e.service,
           floor(d.rec * d.rec * t.links)::int AS j
    FROM draws d
    JOIN bench_tenants t ON d.pick >= t.lo AND d.pick < t.hi
    JOIN bench_events e ON d.ev >= e.lo AND d.ev < e.hi
), rows AS (
    SELECT k.*,
           md5(k.tenant_id || ':' || k.j)::uuid::text AS link_id,
           md5(k.tenant_id || ':app:' || k.j)::uuid::text AS app_id,
           CASE WHEN k.j % 3 = 0 THEN 'partner_contacts' ELSE 'partners' END AS pair,
           CASE WHEN k.j % 3 = 0 THEN '0035g' ELSE '0015g' END || lpad(k.j::text, 10, '0') || 'AAA' AS sf_id,
           CASE WHEN k.j % 3 = 0 THEN 'Contact' ELSE 'Account' END AS crm_object,
           CASE WHEN k.x < 0.55 THEN 'crm' ELSE 'app' END AS side,
           {_pick([r[0] for r in REJECTIONS], "k.y")} AS reject_code,
           {_pick([r[1] for r in REJECTIONS], "k.y")} AS reject_message,
           {_pick([r[2] for r in REJECTIONS], "k.y")} AS reject_field
    FROM keyed k
)
INSERT INTO sync_log (at, tenant_id, service, event, link_id, record_id, code, message, detail)
SELECT r.at, r.tenant_id, r.service, r.event,
       CASE WHEN r.event IN ('write.succeeded', 'write.superseded', 'echoes.dropped', 'change.rejected',
                             'cdc.undecodable') THEN NULL ELSE r.link_id END,
       CASE r.event
           WHEN 'record.created' THEN r.sf_id
           WHEN 'write.rejected' THEN r.sf_id
           WHEN 'change.rejected' THEN CASE WHEN r.side = 'app' THEN r.app_id ELSE r.sf_id END
           WHEN 'change.left_filter' THEN CASE WHEN r.side = 'app' THEN r.app_id ELSE r.sf_id END
           WHEN 'change.dropped' THEN CASE WHEN r.side = 'app' THEN r.app_id ELSE r.sf_id END
       END,
       CASE r.event
           WHEN 'conflict.decided' THEN {_pick(POLICIES, "r.y")}
           WHEN 'write.rejected' THEN r.reject_code
           WHEN 'change.rejected' THEN {_pick([m[0] for m in MAPPING_REFUSALS], "r.y")}
           WHEN 'cdc.undecodable' THEN 'UNDECODABLE'
       END,
       CASE r.event
           WHEN 'conflict.decided' THEN
               CASE WHEN r.pair = 'partners' THEN 'name' ELSE 'email' END || ': '
               || CASE WHEN r.x < 0.5 THEN 'app' ELSE 'crm' END || ' wins (newer edit)'
           WHEN 'write.succeeded' THEN (1 + floor(r.x * 200))::int || ' records written to ' || r.crm_object
           WHEN 'write.rejected' THEN r.reject_message
           WHEN 'echoes.dropped' THEN (1 + floor(r.x * 200))::int || ' of Duplex''s own writes to ' || r.side
               || ' came back for ' || r.pair || ' and were dropped (origin_client)'
           WHEN 'change.rejected' THEN {_pick([m[1] for m in MAPPING_REFUSALS], "r.y")}
           WHEN 'change.left_filter' THEN 'the record no longer matches the pair''s filter; it is no longer synced'
           WHEN 'change.dropped' THEN 'partner_since: unresolved reference'
           WHEN 'write.superseded' THEN (1 + floor(r.x * 5))::int
               || ' records not sent: their link''s version was applied already'
           WHEN 'cdc.undecodable' THEN 'a change event could not be decoded with its schema'
       END,
       CASE r.event
           WHEN 'change.resolved' THEN jsonb_build_object(
               'source_event_id', md5(r.link_id || r.at::text),
               'side', r.side,
               'kind', CASE WHEN r.y < 0.05 THEN 'create' ELSE 'update' END,
               'fields', CASE WHEN r.pair = 'partners' THEN jsonb_build_object(
                       'name', jsonb_build_object('outcome', 'accepted', 'reason', 'newer edit'),
                       'phone', jsonb_build_object('outcome', 'unchanged', 'reason', 'same value'),
                       'status', jsonb_build_object('outcome', CASE WHEN r.y < 0.1 THEN 'rejected' ELSE 'accepted' END,
                                                    'reason', 'app_wins'))
                   ELSE jsonb_build_object(
                       'email', jsonb_build_object('outcome', 'accepted', 'reason', 'newer edit'),
                       'job_title', jsonb_build_object('outcome', 'unchanged', 'reason', 'same value'))
                   END,
               'notes', '[]'::jsonb,
               'writes', CASE
                   WHEN r.y > 0.95 THEN '{{}}'::jsonb
                   WHEN r.side = 'app' THEN jsonb_build_object('crm', jsonb_build_object(
                       'operation', 'upsert', 'fields',
                       CASE WHEN r.pair = 'partners' THEN '["Name", "Partner_Status__c"]'::jsonb
                            ELSE '["Email"]'::jsonb END))
                   ELSE jsonb_build_object('app', jsonb_build_object(
                       'kind', 'update', 'fields',
                       CASE WHEN r.pair = 'partners' THEN '["name", "status"]'::jsonb ELSE '["email"]'::jsonb END)
                       || CASE WHEN r.paused_since IS NOT NULL AND r.at > r.paused_since AND r.pair = 'partners'
                               THEN '{{"held": true}}'::jsonb ELSE '{{}}'::jsonb END)
                   END,
               'dropped', '{{}}'::jsonb)
               -- The decision's lag, logged with an update sent to the app (not with a held one).
               || CASE WHEN r.y <= 0.95 AND r.side = 'crm'
                            AND NOT (r.paused_since IS NOT NULL AND r.at > r.paused_since AND r.pair = 'partners')
                       THEN jsonb_build_object('lag_ms', (20 + floor(r.x * r.x * 4000))::int)
                       ELSE '{{}}'::jsonb END
           WHEN 'conflict.decided' THEN jsonb_build_object(
               'field', CASE WHEN r.pair = 'partners' THEN 'name' ELSE 'email' END,
               'winner', CASE WHEN r.x < 0.5 THEN 'app' ELSE 'crm' END, 'outcome', 'accepted')
           WHEN 'write.succeeded' THEN jsonb_build_object(
               'count', (1 + floor(r.x * 200))::int, 'created', floor(r.x * r.y * 20)::int,
               'objects', jsonb_build_array(r.crm_object), 'lag_ms', (150 + floor(r.y * r.y * 6000))::int)
           WHEN 'write.rejected' THEN CASE WHEN r.service = 'writer' THEN jsonb_build_object(
                   'crm_object', r.crm_object, 'operation', 'upsert', 'external_id_value', 'dx-' || r.link_id,
                   'fields', CASE WHEN r.reject_field = '' THEN '[]'::jsonb ELSE jsonb_build_array(r.reject_field) END,
                   'errors', jsonb_build_array(r.reject_code), 'command_ids', jsonb_build_array(md5(r.at::text)),
                   'attempts', 1 + floor(r.x * 3)::int)
               ELSE jsonb_build_object(
                   'version', 1 + floor(r.x * 40)::int,
                   'rolled_back', CASE WHEN r.pair = 'partners' THEN '["status", "tier"]'::jsonb
                                       ELSE '["email"]'::jsonb END,
                   'errors', jsonb_build_array(jsonb_build_object(
                       'code', r.reject_code, 'message', r.reject_message,
                       'fields', CASE WHEN r.reject_field = '' THEN '[]'::jsonb
                                      ELSE jsonb_build_array(r.reject_field) END)))
               END
           WHEN 'echoes.dropped' THEN jsonb_build_object(
               'count', (1 + floor(r.x * 200))::int, 'object_pair', r.pair, 'side', r.side, 'echo', 'origin_client')
           WHEN 'change.rejected' THEN jsonb_build_object('source_event_id', md5(r.app_id || r.at::text))
           WHEN 'change.left_filter' THEN jsonb_build_object(
               'source_event_id', md5(r.app_id || r.at::text), 'object', r.crm_object)
           WHEN 'change.dropped' THEN jsonb_build_object(
               'source_event_id', md5(r.app_id || r.at::text), 'object', r.crm_object,
               'dropped', jsonb_build_object('partner_since', 'unresolved reference'))
           WHEN 'write.superseded' THEN jsonb_build_object(
               'count', 1, 'versions', jsonb_build_object(r.link_id, 1 + floor(r.x * 40)::int),
               'command_ids', jsonb_build_array(md5(r.at::text)))
           WHEN 'cdc.undecodable' THEN jsonb_build_object('channel', '/data/AccountChangeEvent', 'replay_id', r.j)
           ELSE '{{}}'::jsonb
       END
FROM rows r
ORDER BY r.at
"""

_LINKS = """
INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id, created_at, updated_at)
SELECT t.name, CASE WHEN j % 3 = 0 THEN 'partner_contacts' ELSE 'partners' END,
       md5(t.name || ':' || j)::uuid::text, md5(t.name || ':app:' || j)::uuid::text,
       CASE WHEN j % 3 = 0 THEN '0035g' ELSE '0015g' END || lpad(j::text, 10, '0') || 'AAA',
       'dx-' || md5(t.name || ':' || j)::uuid::text,
       now() - interval '40 days', now() - random() * interval '30 days'
FROM bench_tenants t, generate_series(0, t.links - 1) AS j
"""


def _sf(name: str, kind: str = "string", label: str | None = None, /, **flags: Any) -> CrmField:
    picklist = tuple(PicklistValue(v, v) for v in flags.pop("values", ()))
    return CrmField(name, label or name, kind, picklist=picklist, **flags)


_READ_ONLY = {"createable": False, "updateable": False}
# What the sample tenant maps, and a few fields it does not.
ACCOUNT = CrmObject(
    "Account",
    "Account",
    fields=(
        _sf("Id", "id", **_READ_ONLY),
        _sf("Name", "string", "Account Name", length=255, nillable=False),
        _sf("Website", "url", length=255),
        _sf("Phone", "phone", length=40),
        _sf("Partner_Status__c", "picklist", values=("Active", "Onboarding", "Suspended")),
        _sf("Tier__c", "picklist", values=("Gold", "Silver", "Bronze")),
        _sf("Industries__c", "multipicklist", values=("Software", "Services", "Hardware")),
        _sf("Partner_Since__c", "date"),
        _sf("AnnualRevenue", "currency", "Annual Revenue"),
        _sf("NumberOfEmployees", "int", "Employees"),
        _sf("Archived__c", "boolean", defaulted_on_create=True, nillable=False),
        _sf("Description", "textarea", length=32000),
        _sf("ParentId", "reference", "Parent Account", reference_to=("Account",)),
        _sf("SystemModstamp", "datetime", **_READ_ONLY),
        _sf("Duplex_Id__c", "string", length=64, external_id=True, unique=True),
        _sf("BillingPostalCode", "string", "Billing Zip/Postal Code", length=20),
        _sf("BillingCity", "string", "Billing City", length=40),
        _sf("Type", "picklist", "Account Type", values=("Customer - Direct", "Prospect")),
    ),
)
# Partner_Since__c deleted in the org: the rule mapping it is paused by drift.
ACCOUNT_DRIFTED = CrmObject(
    "Account", "Account", fields=tuple(f for f in ACCOUNT.fields if f.name != "Partner_Since__c")
)
CONTACT = CrmObject(
    "Contact",
    "Contact",
    fields=(
        _sf("Id", "id", **_READ_ONLY),
        _sf("FirstName", length=40),
        _sf("LastName", length=80, nillable=False),
        _sf("Email", "email", length=80),
        _sf("Phone", "phone", length=40),
        _sf("Title", length=128),
        _sf("AccountId", "reference", reference_to=("Account",)),
        _sf("HasOptedOutOfEmail", "boolean", defaulted_on_create=True, nillable=False),
        _sf("Portal_User__c", "boolean", defaulted_on_create=True, nillable=False),
        _sf("Duplex_Id__c", length=64, external_id=True, unique=True),
    ),
)
PARTNERS = AppObject(
    "partners",
    (
        AppField("id"),
        AppField("name", "Company name"),
        AppField("website"),
        AppField("phone"),
        AppField("status", "Status", FieldType.PICKLIST, picklist=("active", "onboarding", "suspended")),
        AppField("tier", "Tier", FieldType.PICKLIST, picklist=("gold", "silver", "bronze", "trial")),
        AppField("billing_zip", "Billing ZIP code"),
        AppField("founded", "Founded on", FieldType.DATE),
        AppField("archived", "Archived", FieldType.BOOL),
    ),
)
PARTNER_CONTACTS = AppObject(
    "partner_contacts",
    (
        AppField("id"),
        AppField("first_name", "First name"),
        AppField("last_name", "Last name", required=True),
        AppField("email", "Email"),
        AppField("phone"),
        AppField("job_title", "Job title"),
        AppField("partner_id", "Partner", FieldType.REFERENCE),
    ),
)


@dataclass(frozen=True)
class Tenant:
    name: str
    # The share of the generated rows, and the links its records have.
    share: float
    links: int
    paused_since: datetime | None

    @property
    def rows(self) -> int:
        return round(ROWS * self.share)


def tenants(now: datetime) -> list[Tenant]:
    weights = [1 / math.sqrt(k + 1) for k in range(TENANTS)]
    total = sum(weights)
    return [
        Tenant(
            name=f"acme-{k:02d}",
            share=w / total,
            links=max(100, round(ROWS * w / total / 8)),
            paused_since=now - timedelta(hours=30 + k) if k % PAUSED_EVERY == 3 else None,
        )
        for k, w in enumerate(weights)
    ]


def _document(name: str, cap: int) -> dict[str, Any]:
    text = SAMPLE.read_text()
    text = text.replace("name: acme\n", f"name: {name}\n", 1)
    text = text.replace("https://acme.my.salesforce.com", f"https://{name}.my.salesforce.com", 1)
    text = text.replace("callOptionsClient: duplex-acme", f"callOptionsClient: duplex-{name}", 1)
    text = text.replace("dailyApiCap: 5000", f"dailyApiCap: {cap}", 1)
    document: dict[str, Any] = yaml.safe_load(text)
    return document


@asynccontextmanager
async def private_postgres() -> AsyncIterator[str]:
    """A PostgreSQL server in a temporary folder, its DSN; stopped (the folder removed) afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        root = Path(tmp)
        # PostgreSQL runs as its own account when we are root; it must reach its data directory.
        await asyncio.to_thread(root.chmod, 0o755)
        (port,) = pick_free_ports(1)
        postgres = PostgresServer(root / "postgres", port, durable=False)
        await asyncio.to_thread(postgres.start)
        try:
            await postgres.wait_ready()
            yield postgres.dsn
        finally:
            await asyncio.to_thread(postgres.stop)


async def _configure(conn: Any, all_tenants: Sequence[Tenant]) -> None:
    store = ConfigStore(conn)
    for cap in CAPS:
        await store.apply([parse_tenant_config(_document(t.name, cap)) for t in all_tenants], "bench")


async def _partitions(conn: Any, today: date) -> None:
    """The day partitions retention keeps: the last ``DAYS`` days (migration 0018 made the week ahead)."""
    await conn.execute("SELECT sync_log_ensure_day($1::date - n) FROM generate_series(0, $2) AS n", today, DAYS + 1)


async def _sync_log(conn: Any, all_tenants: Sequence[Tenant]) -> None:
    await conn.execute(
        "CREATE TEMP TABLE bench_tenants (name text, lo float8, hi float8, links int, paused_since timestamptz)"
    )
    lo = 0.0
    rows = []
    for t in all_tenants:
        rows.append((t.name, lo, lo + t.share, t.links, t.paused_since))
        lo += t.share
    rows[-1] = (*rows[-1][:2], 1.0 + 1e-9, *rows[-1][3:])
    await conn.executemany("INSERT INTO bench_tenants VALUES ($1, $2, $3, $4, $5)", rows)
    await conn.execute("CREATE TEMP TABLE bench_events (lo float8, hi float8, event text, service text)")
    lo, events = 0.0, []
    for event, service, share in EVENTS:
        events.append((lo, lo + share, event, service))
        lo += share
    events[-1] = (events[-1][0], 1.0 + 1e-9, *events[-1][2:])
    await conn.executemany("INSERT INTO bench_events VALUES ($1, $2, $3, $4)", events)
    await conn.execute("ANALYZE bench_tenants")
    await conn.execute("ANALYZE bench_events")
    await conn.execute("SELECT setseed($1)", SEED)
    await conn.execute(_LINKS)
    # The oldest day first, so ids grow with time as the services' appends make them.
    for day in reversed(range(DAYS)):
        count = ROWS * (day + 1) // DAYS - ROWS * day // DAYS
        await conn.execute(_DAY, day, count)


async def _news(conn: Any, all_tenants: Sequence[Tenant], now: datetime) -> int:
    """Each tenant's news: quarantines begun and ended, budget warnings, connection errors; how many rows."""
    rows: list[tuple[Any, ...]] = []
    current = len(CAPS)
    for k, t in enumerate(all_tenants):
        for n, days_ago in enumerate((25, 18, 9)):
            began = now - timedelta(days=days_ago, hours=k % 12)
            pair = "partner_contacts" if n % 2 else "partners"
            version = 1 + n * (current - 1) // 3
            quarantine = {"pair": pair, "rejected": 60, "samples": 100, "configuration_version": version}
            message = f"{pair}: 60 of the last 100 changes were rejected; its further changes are dead-lettered"
            rows.append((began, t.name, "mapping", "pair.quarantined", None, "QUARANTINED", message, quarantine))
            released = {"pair": pair, "configuration_version": version}
            rows.append(
                (
                    began + timedelta(minutes=15),
                    t.name,
                    "mapping",
                    "pair.released",
                    None,
                    None,
                    f"pair {pair!r} is no longer quarantined: its changes are mapped again",
                    released,
                )
            )
        if k % QUARANTINED_EVERY == 5:
            quarantine = {"pair": "partner_contacts", "rejected": 55, "samples": 100, "configuration_version": current}
            rows.append(
                (
                    now - timedelta(hours=3),
                    t.name,
                    "mapping",
                    "pair.quarantined",
                    None,
                    "QUARANTINED",
                    "partner_contacts: 55 of the last 100 changes were rejected; its further changes are dead-lettered",
                    quarantine,
                )
            )
        rows.extend(
            (
                now - timedelta(hours=hours_ago),
                t.name,
                "rate-limit-governor",
                "budget.warning",
                None,
                "BUDGET_LOW",
                "less than 10 % of the daily API budget left (412 calls)",
                {"remaining": 412},
            )
            for hours_ago in (2 + k % 5, 50, 200)
        )
        rows.append(
            (
                now - timedelta(days=4, hours=k % 24),
                t.name,
                "cdc-ingest",
                "connection.error",
                None,
                "INVALID_SESSION_ID",
                "Salesforce refused the session: Session expired or invalid",
                {"status": 401},
            )
        )
    await conn.executemany(
        "INSERT INTO sync_log (at, tenant_id, service, event, link_id, code, message, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        [(*r[:7], json.dumps(r[7], sort_keys=True)) for r in rows],
    )
    return len(rows)


async def _jobs(conn: Any, all_tenants: Sequence[Tenant], now: datetime) -> int:
    rows: list[tuple[Any, ...]] = []
    for k, t in enumerate(all_tenants):
        for n in range(30):
            kind = ("poll", "poll", "reconcile", "backfill")[n % 4]
            pair = "partners" if n % 2 else "partner_contacts"
            obj = "Account" if pair == "partners" else "Contact"
            created = now - timedelta(days=29 - n, hours=k % 24)
            failed = n % 9 == 4
            rows.append(
                (
                    t.name,
                    kind,
                    pair,
                    obj,
                    "failed" if failed else "succeeded",
                    "operator" if n % 5 == 0 else "schedule",
                    "admin@example.com" if n % 5 == 0 else "",
                    1200 + 40 * n,
                    1200 + 40 * n,
                    json.dumps({"windows": 24, "differences": n % 3, "repaired": n % 3} if kind == "reconcile" else {}),
                    "Salesforce answered 503 Service Unavailable" if failed else None,
                    created,
                    created + timedelta(seconds=5),
                    created + timedelta(minutes=4),
                    created + timedelta(minutes=4),
                )
            )
        if k % 5 == 0:
            # One reconcile running and a poll waiting.
            started = now - timedelta(minutes=3)
            running = (t.name, "reconcile", "partners", "Account", "running", "operator", "admin@example.com")
            rows.append((*running, 600, 2400, "{}", None, started, started, now, None))
            waiting = (t.name, "poll", "partner_contacts", "Contact", "requested", "schedule", "")
            rows.append((*waiting, 0, None, "{}", None, now, None, now, None))
    await conn.executemany(
        "INSERT INTO jobs (tenant_id, kind, object_pair, object, status, trigger, requested_by, done, estimated,"
        " result, error, created_at, started_at, updated_at, finished_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15)",
        rows,
    )
    return len(rows)


async def _pauses(conn: Any, all_tenants: Sequence[Tenant]) -> None:
    for t in all_tenants:
        if t.paused_since is None:
            continue
        await conn.execute(
            "INSERT INTO sync_pauses (tenant_id, object_pair, direction, reason, actor, paused_at)"
            " VALUES ($1, 'partners', 'to_app', 'the partners app is migrating its database', 'admin@example.com', $2)",
            t.name,
            t.paused_since,
        )
        # What the pause holds: the updates it stopped, a few hundred.
        await conn.execute(
            "INSERT INTO held_outputs (tenant_id, object_pair, direction, record_key, message, held_at)"
            " SELECT $1, 'partners', 'to_app', convert_to(md5($1 || n::text), 'UTF8'),"
            " decode(repeat('ab', 300), 'hex'), $2::timestamptz + n * interval '5 minutes'"
            " FROM generate_series(1, 300) AS n",
            t.name,
            t.paused_since,
        )


async def _budgets(conn: Any, all_tenants: Sequence[Tenant], now: datetime) -> None:
    """The governor's stored budgets (services/rate_limit_governor/state.py): a bucket per minute."""
    rows = []
    minute = now.replace(second=0, microsecond=0)
    for k, t in enumerate(all_tenants):
        per_minute = 1 + round(t.share * 60)
        ledger = {(minute - timedelta(minutes=m)).isoformat(): per_minute + (m * 7 + k) % 3 for m in range(24 * 60)}
        state = {
            "ledger": ledger,
            "tokens": 20.0,
            "tokensAt": now.isoformat(),
            "org": {"used": 40_000 + 500 * k, "max": 100_000, "observedAt": (now - timedelta(minutes=4)).isoformat()},
            "grantedSinceReport": per_minute * 4,
            "leases": {},
        }
        rows.append((t.name, json.dumps(state)))
    await conn.executemany(
        "INSERT INTO governor_budgets (tenant_id, state, updated_at) VALUES ($1, $2::jsonb, now())", rows
    )


async def _schemas(conn: Any, all_tenants: Sequence[Tenant]) -> None:
    for k, t in enumerate(all_tenants):
        await save_described(conn, t.name, "Account", ACCOUNT, cdc_selected=True)
        await save_described(conn, t.name, "Contact", CONTACT, cdc_selected=k % 4 != 1)
        if k % QUARANTINED_EVERY == 2:
            await save_described(conn, t.name, "Account", ACCOUNT_DRIFTED, cdc_selected=True)
        await declare_app_object(conn, t.name, PARTNERS, "partners-app")
        await declare_app_object(conn, t.name, PARTNER_CONTACTS, "partners-app")


@dataclass(frozen=True)
class Loaded:
    tenants: list[Tenant]
    rows: int
    jobs: int
    seconds: float
    # The busiest tenant, its rows, its busiest record (a Salesforce id) and that record's rows.
    tenant: str
    tenant_rows: int
    record: str
    record_rows: int
    server_version: str


async def load(dsn: str) -> Loaded:
    """Migrate and fill the database; what it holds."""
    started = time.perf_counter()
    await migrate(dsn)
    now = datetime.now(UTC)
    all_tenants = tenants(now)
    conn = await asyncpg.connect(dsn)
    try:
        await _configure(conn, all_tenants)
        await _partitions(conn, now.date())
        await _sync_log(conn, all_tenants)
        news = await _news(conn, all_tenants, now)
        jobs = await _jobs(conn, all_tenants, now)
        await _pauses(conn, all_tenants)
        await _budgets(conn, all_tenants, now)
        await _schemas(conn, all_tenants)
        await conn.execute("ANALYZE")
        busiest = all_tenants[0].name
        tenant_rows = await conn.fetchval("SELECT count(*) FROM sync_log WHERE tenant_id = $1", busiest)
        # Link 0 is the busiest record (its draw is squared); a Contact, named by its Salesforce id.
        record = await conn.fetchval(
            "SELECT crm_record_id FROM links WHERE tenant_id = $1 AND link_id = md5($1 || ':0')::uuid::text", busiest
        )
        record_rows = await conn.fetchval(
            "SELECT count(*) FROM sync_log s JOIN links l ON l.tenant_id = s.tenant_id"
            " AND (s.link_id = l.link_id OR s.record_id = l.crm_record_id)"
            " WHERE l.tenant_id = $1 AND l.crm_record_id = $2",
            busiest,
            record,
        )
        default_rows = await conn.fetchval("SELECT count(*) FROM sync_log_default")
        if default_rows:
            raise RuntimeError(f"{default_rows} sync-log rows fell into the default partition")
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return Loaded(
        tenants=all_tenants,
        rows=ROWS + news,
        jobs=jobs,
        seconds=time.perf_counter() - started,
        tenant=busiest,
        tenant_rows=tenant_rows,
        record=record,
        record_rows=record_rows,
        server_version=str(version),
    )


@dataclass(frozen=True)
class Timed:
    page: str
    path: str
    p50: float
    p95: float
    worst: float


async def _time(client: httpx.AsyncClient, page: str, path: str, check: str | None = None) -> Timed:
    """``path`` asked for ``WARM_UP`` times, then timed ``REQUESTS`` times one after another (ms)."""
    times = []
    for n in range(WARM_UP + REQUESTS):
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:500]}")
        if check is not None and check not in response.text:
            raise RuntimeError(f"GET {path}: the page does not say {check!r}")
        if n >= WARM_UP:
            times.append(elapsed)
    return Timed(page, path, percentile(times, 0.5), percentile(times, 0.95), max(times))


def _settings(dsn: str) -> AdminSettings:
    # Spelt out, so that no DUPLEX_* or KAFKA_* variable of the shell changes what is measured.
    policy = PolicySettings(secret_env_prefix="DUPLEX_SECRET_", salesforce_hosts="", development=False)
    return AdminSettings(postgres_dsn=dsn, port=0, actor="bench", vault=None, kafka=None, policy=policy)


async def measure(dsn: str, loaded: Loaded) -> tuple[list[Timed], int]:
    """Every page and API route timed; and the pool size the API ran with."""
    settings = _settings(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        _, token = await TokenStore(conn).create(
            name="bench admin", role=Role.ADMIN, tenants=None, lifetime=None, actor="bench"
        )
    finally:
        await conn.close()
    t = quote(loaded.tenant, safe="")
    record = quote(loaded.record, safe="")
    console = [
        ("console: tenants (50 cards)", "/console/tenants", "acme-49"),
        ("console: tenant", f"/console/tenants/{t}", "Lag to Salesforce: largest lag"),
        ("console: sync log", f"/console/tenants/{t}/sync-log", None),
        ("console: sync log, rejected", f"/console/tenants/{t}/sync-log?status=rejected", None),
        ("console: sync log, one record", f"/console/tenants/{t}/sync-log?record={record}", None),
        # Beyond issue #17's list: the search form's other filters that read more than a page of rows.
        ("console: sync log, one pair", f"/console/tenants/{t}/sync-log?pair=partner_contacts", None),
        ("console: sync log, info", f"/console/tenants/{t}/sync-log?status=info", None),
        ("console: record timeline", f"/console/tenants/{t}/records/{record}", None),
        ("console: history", f"/console/tenants/{t}/history", None),
        ("console: pair (partners)", f"/console/tenants/{t}/pairs/partners", "Partner_Status__c"),
    ]
    api = [
        ("api: health", f"/api/v1/tenants/{t}/health", None),
        ("api: throughput", f"/api/v1/tenants/{t}/throughput", None),
        ("api: sync log (50)", f"/api/v1/tenants/{t}/sync-log?limit=50", None),
        ("api: sync log, rejected (50)", f"/api/v1/tenants/{t}/sync-log?limit=50&status=rejected", None),
    ]
    timed = []
    async with run_admin(settings, secrets=env_secrets({})) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://admin", headers={"cookie": f"{COOKIE}={token}"}, timeout=120
        ) as pages:
            for page, path, check in console:
                timed.append(await _time(pages, page, path, check))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://admin", headers={"authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            for page, path, check in api:
                timed.append(await _time(client, page, path, check))
    return timed, settings.pool_max_size


def _load_average() -> str:
    return " ".join(f"{n:.1f}" for n in os.getloadavg())


async def _run() -> Result:
    async with private_postgres() as dsn:
        loaded = await load(dsn)
        before = _load_average()
        timed, pool = await measure(dsn, loaded)
        after = _load_average()
    return Result(
        benchmark="console: server time of the console's pages and the API routes they call most (issue #17)",
        parameters={
            "tenants": TENANTS,
            "sync-log rows": f"{loaded.rows:,} over {DAYS} days",
            "busiest tenant": f"{loaded.tenant} ({loaded.tenant_rows:,} rows)",
            "record": f"{loaded.record} ({loaded.record_rows:,} rows)",
            "requests": f"{REQUESTS} per page after {WARM_UP} to warm up",
            "API pool": pool,
            "PostgreSQL": loaded.server_version.split()[0],
        },
        figures=[Figure(f"{t.page} p95", t.p95, "ms", TARGET_MS, higher_is_better=False) for t in timed],
        notes=[
            f"  {'page':<32} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  path",
            *(f"  {t.page:<32} {t.p50:>8.1f} {t.p95:>8.1f} {t.worst:>8.1f}  {t.path}" for t in timed),
            f"  loading (migrate, tenants, {loaded.rows:,} rows, links, jobs, schemas, ANALYZE):"
            f" {loaded.seconds:.0f} s",
            "  server time: request to full response in-process (httpx ASGI client, no network);"
            " PostgreSQL and the app share the machine",
            f"  load average (1, 5, 15 min) before timing: {before}; after: {after}",
        ],
    )


def run() -> Result:
    return asyncio.run(_run())

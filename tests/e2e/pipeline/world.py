"""The outer worlds of the fault test: per tenant, an emulated Salesforce org and a partners app database.

Neither side goes through Duplex. Salesforce edits are REST calls as the org's admin user, stamped
``client=sales-console``; app edits use the example app's own functions on its database (its
outbox then publishes them). Both sides retry what the faults make fail (503s, lock errors, an
exhausted API limit, an expired token, a restarting database), as their real users' tools would.

Every edit is remembered, so the test knows what each record must hold in the end: edits of one
tenant are made one at a time, so the last edit made to a field is also the newest by origin
commit time, which is what ``newest_wins`` keeps.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
from aiokafka.errors import KafkaError

from devstack.emulator import API_VERSION, EmulatorProcess
from examples.partners_app import app as partners

API = f"/services/data/v{API_VERSION}"
REP_CLIENT = "sales-console"
T = TypeVar("T")

APP_EDITS = ("name", "notes", "phone")
CRM_EDITS = ("name", "notes", "website")


@dataclass(frozen=True)
class CrmObject:
    """The Salesforce object a tenant's partners sync with, and its field for each app column."""

    name: str
    fields: dict[str, str]


# app column -> Salesforce field (who may edit it: APP_EDITS, CRM_EDITS; see `tenant_document`).
ACCOUNT = CrmObject("Account", {"name": "Name", "notes": "Description", "phone": "Phone", "website": "Website"})


def partner_object(name: str) -> CrmObject:
    """A custom object with the partners' fields (``org_objects`` defines it in an org)."""
    return CrmObject(name, {"name": "Name", "notes": "Notes__c", "phone": "Phone__c", "website": "Website__c"})


def org_objects(objects: list[CrmObject]) -> dict[str, Any]:
    """The ``objects`` of an org spec defining ``objects`` (Duplex's external id on each)."""
    external_id = {"name": "Duplex_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
    specs: dict[str, Any] = {}
    for obj in objects:
        custom = [{"name": f, "type": "string", "length": 255} for f in obj.fields.values() if f.endswith("__c")]
        specs[obj.name] = {"fields": [external_id, *custom]}
    return specs


def tenant_document(
    tenant: str, emulator: EmulatorProcess, client_id: str, cap: int, crm: CrmObject = ACCOUNT
) -> dict[str, Any]:
    """Partners ⇄ ``crm``: name and notes newest-wins both ways, phone app → CRM, website CRM → app."""
    f = crm.fields
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": tenant},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "client_credentials",
                    "clientId": client_id,
                    "clientSecret": {"secretRef": {"env": secret_env(tenant)}},
                },
                "dailyApiCap": cap,
                "callOptionsClient": duplex_client(tenant),
            },
            "sync": {"cdc": True, "backfill": {"ingestion": "rest"}},
            "objects": [
                {
                    "name": "partners",
                    "app": {"object": "partners", "idField": "id"},
                    "salesforce": {"object": crm.name, "externalIdField": "Duplex_Id__c"},
                    "conflictPolicy": "newest_wins",
                    "deletePolicy": "propagate",
                    "fields": [
                        {"app": "name", "salesforce": f["name"], "transform": {"type": "string", "maxLength": 255}},
                        {"app": "notes", "salesforce": f["notes"], "transform": {"type": "string"}},
                        {"app": "phone", "salesforce": f["phone"], "direction": "app_to_crm"},
                        {"app": "website", "salesforce": f["website"], "direction": "crm_to_app"},
                        {"app": "salesforce_id", "salesforce": "Id", "direction": "crm_to_app"},
                    ],
                }
            ],
        },
    }


def secret_env(tenant: str) -> str:
    return f"DUPLEX_SECRET_SF_{tenant.upper().replace('-', '_')}"


def duplex_client(tenant: str) -> str:
    return f"duplex-{tenant}"


async def retrying(what: str, call: Callable[[], Awaitable[T]], *, within: float = 120.0) -> T:
    """``call()`` until it succeeds: the faults under test make calls fail for a while."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except (
            TransientError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            httpx.TransportError,
            KafkaError,
        ) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within:.0f}s: {exc!r}") from exc
            await asyncio.sleep(0.3)


class TransientError(Exception):
    """A Salesforce answer worth retrying (503, lock, limit, expired session)."""


@dataclass
class SalesforceSide:
    """The org's admin, editing the tenant's records (Accounts unless ``crm`` says otherwise) over REST."""

    emulator: EmulatorProcess
    alias: str
    crm: CrmObject = ACCOUNT
    _token: str | None = None
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> SalesforceSide:
        self._http = httpx.AsyncClient(
            base_url=self.emulator.instance_url,
            verify=ssl.create_default_context(cafile=self.emulator.ca_cert),
            timeout=30,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        await self._http.aclose()

    async def _login(self) -> str:
        assert self._http is not None
        response = await self._http.post(
            "/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": f"{self.alias}-client",
                "client_secret": f"{self.alias}-secret",
                "username": f"admin@{self.alias}.example",
                "password": f"{self.alias}-password",
            },
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        if self._token is None:
            self._token = await self._login()
        headers = {"Authorization": f"Bearer {self._token}", "Sforce-Call-Options": f"client={REP_CLIENT}"}
        response = await self._http.request(method, path, json=body, headers=headers)
        if response.status_code == 401:
            self._token = None
            raise TransientError("session expired")
        if response.status_code >= 500 or response.status_code == 403:
            raise TransientError(f"{response.status_code} {response.text[:200]}")
        if response.status_code == 400 and "UNABLE_TO_LOCK_ROW" in response.text:
            raise TransientError(response.text[:200])
        response.raise_for_status()
        return response.json() if response.content else None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await retrying(f"{method} {path}", lambda: self._call(method, path, body))

    async def create(self, records: list[dict[str, Any]]) -> list[str]:
        body = {"allOrNone": True, "records": [{"attributes": {"type": self.crm.name}, **r} for r in records]}

        async def attempt() -> list[str]:
            results = await self._call("POST", f"{API}/composite/sobjects", body)
            if not all(r["success"] for r in results):
                codes = {e["statusCode"] for r in results for e in r.get("errors", [])}
                # All or none: a record lock rolled the whole call back, so it can simply be made again.
                if "UNABLE_TO_LOCK_ROW" in codes:
                    raise TransientError(str(codes))
                raise AssertionError(results)
            return [r["id"] for r in results]

        return await retrying("create", attempt)

    async def update(self, record_id: str, values: dict[str, Any]) -> None:
        await self.call("PATCH", f"{API}/sobjects/{self.crm.name}/{record_id}", values)

    async def delete(self, record_id: str) -> None:
        await self.call("DELETE", f"{API}/sobjects/{self.crm.name}/{record_id}")

    async def accounts(self) -> dict[str, dict[str, Any]]:
        """Every live record of the tenant's object, by id."""
        fields = ", ".join(["Id", "Duplex_Id__c", *self.crm.fields.values()])
        page = await self.call("GET", f"{API}/query?q=SELECT+{fields.replace(' ', '+')}+FROM+{self.crm.name}")
        records = list(page["records"])
        while not page["done"]:
            page = await self.call("GET", page["nextRecordsUrl"])
            records.extend(page["records"])
        return {r["Id"]: r for r in records}


@dataclass
class AppSide:
    """The partners app's users, changing rows in its database."""

    dsn: str

    async def _conn(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn, timeout=10)
        return conn

    async def _with(self, work: Callable[[Any], Awaitable[T]]) -> T:
        conn = await self._conn()
        try:
            return await work(conn)
        finally:
            await conn.close()

    async def migrate(self) -> None:
        await self._with(partners.migrate)

    async def create(self, values: dict[str, Any]) -> str:
        return await retrying("app create", lambda: self._with(lambda c: partners.create_partner(c, values)))

    async def update(self, record_id: str, values: dict[str, Any]) -> None:
        await retrying("app edit", lambda: self._with(lambda c: partners.edit_partner(c, record_id, values)))

    async def delete(self, record_id: str) -> None:
        await retrying("app delete", lambda: self._with(lambda c: partners.delete_partner(c, record_id)))

    async def rows(self) -> dict[str, dict[str, Any]]:
        async def fetch(conn: Any) -> dict[str, dict[str, Any]]:
            rows = await conn.fetch("SELECT * FROM partners_app.partners")
            return {r["id"]: dict(r) for r in rows}

        return await retrying("app rows", lambda: self._with(fetch))


@dataclass
class Record:
    """One partner as the test expects it: its ids on both sides and the values it must end with."""

    origin: str  # "app" or "crm": where it was created
    app_id: str | None
    crm_id: str | None
    expected: dict[str, Any]
    # Records created while the faults go on, and records to delete, are never edited.
    editable: bool = True
    deleted: bool = False
    # Every edit made to it, in order: (side, column, value).
    edits: list[tuple[str, str, Any]] = field(default_factory=list)

    def last(self, side: str, column: str) -> Any:
        """The value of the last edit of ``column`` made on ``side`` (None if there was none)."""
        return next((v for s, c, v in reversed(self.edits) if (s, c) == (side, column)), None)


@dataclass
class Tenant:
    name: str
    cap: int
    crm: SalesforceSide
    app: AppSide
    records: list[Record] = field(default_factory=list)
    edits: int = 0
    created_late: int = 0

    @property
    def fields(self) -> dict[str, str]:
        """App column -> the Salesforce field it syncs with."""
        return self.crm.crm.fields

    async def seed(self, count: int) -> None:
        """``count`` partners on each side."""
        for i in range(count):
            values = {"name": f"{self.name} app {i}", "phone": f"+33 1 {i:04d}", "notes": None}
            app_id = await self.app.create(values)
            self.records.append(Record("app", app_id, None, values | {"website": None}))
        crm_values = [
            {"name": f"{self.name} crm {i}", "website": f"https://crm{i}.example", "notes": None} for i in range(count)
        ]
        ids = await self.crm.create([{self.fields[k]: v for k, v in values.items()} for values in crm_values])
        for crm_id, values in zip(ids, crm_values, strict=True):
            self.records.append(Record("crm", None, crm_id, values | {"phone": None}))

    def link(self, app_rows: dict[str, dict[str, Any]]) -> None:
        """Fill in each record's id on the other side, from the app rows' ``salesforce_id``."""
        app_of = {row["salesforce_id"]: app_id for app_id, row in app_rows.items() if row["salesforce_id"]}
        for record in self.records:
            if record.app_id is not None and record.crm_id is None:
                record.crm_id = app_rows.get(record.app_id, {}).get("salesforce_id")
            elif record.crm_id is not None and record.app_id is None:
                record.app_id = app_of.get(record.crm_id)

    async def create_late(self, rng: random.Random) -> None:
        """A record created while the faults go on."""
        n = self.created_late
        self.created_late += 1
        if rng.random() < 0.5:
            values = {"name": f"{self.name} late app {n}", "phone": f"+44 {n}", "notes": f"late {n}"}
            app_id = await self.app.create(values)
            self.records.append(Record("app", app_id, None, values | {"website": None}, editable=False))
        else:
            values = {"name": f"{self.name} late crm {n}", "website": f"https://late{n}.example", "notes": f"late {n}"}
            [crm_id] = await self.crm.create([{self.fields[k]: v for k, v in values.items()}])
            self.records.append(Record("crm", None, crm_id, values | {"phone": None}, editable=False))

    async def edit(self, rng: random.Random) -> None:
        """One random edit of a random record, on a random side, of a field that side may change."""
        record = rng.choice([r for r in self.records if r.editable])
        assert record.app_id is not None
        assert record.crm_id is not None
        side = rng.choice(("app", "crm"))
        column = rng.choice(APP_EDITS if side == "app" else CRM_EDITS)
        value = f"{side}-{uuid.uuid4().hex[:8]}"
        if column == "website":
            value = f"https://{value}.example"
        if side == "app":
            await self.app.update(record.app_id, {column: value})
        else:
            await self.crm.update(record.crm_id, {self.fields[column]: value})
        record.expected[column] = value
        record.edits.append((side, column, value))
        self.edits += 1

    async def delete(self, record: Record) -> None:
        """Delete ``record`` on the side it was created on."""
        record.editable = False
        if record.origin == "app":
            assert record.app_id is not None
            await self.app.delete(record.app_id)
        else:
            assert record.crm_id is not None
            await self.crm.delete(record.crm_id)
        record.deleted = True

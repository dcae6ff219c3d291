"""Shared set-up for cdc-ingest tests: a private org in the emulator, a tenant configured for it,
cdc-ingest running in-process or as its own process, and a reader of crm-changes.

Integration tests take the ``cdc`` fixture (a :class:`Harness`, see ``conftest.py``); the
end-to-end tests, which run cdc-ingest as a process, use the functions it is built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import requests
from aiokafka import AIOKafkaConsumer
from duplex.change.v1 import record_changed_pb2
from simple_salesforce.api import Salesforce

from devstack.emulator import API_VERSION, ROOT, EmulatorProcess
from devstack.health import wait_serving
from devstack.ports import pick_free_ports
from services.cdc_ingest.app import RunningCdcIngest, run, unlimited_budgets
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.db import migrate
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.telemetry import Telemetry
from services.common.tenant_config import canonical_json, config_sha256, parse_tenant_config
from services.common.tenant_config.policy import PolicySettings
from services.common.topics import Topic, TopicNames

RecordChanged = record_changed_pb2.RecordChanged
CLIENT = "someone-else"
# The call-options client cdc-ingest stamps on the tenants' calls (the emulator counts calls per client).
CALL_OPTIONS_CLIENT = "duplex-test"


@dataclass(frozen=True)
class Org:
    """A private org, so that each test sees only its own records and events."""

    emulator: EmulatorProcess
    org_id: str
    alias: str
    username: str
    password: str
    client_id: str
    client_secret: str

    def token(self) -> dict[str, Any]:
        with self.emulator.http() as client:
            response = client.post(
                "/services/oauth2/token",
                data={
                    "grant_type": "password",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "username": self.username,
                    "password": self.password,
                },
            )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def undelete(self, *record_ids: str, client: str = CLIENT) -> None:
        """Restore records from the recycle bin with the partner SOAP API (REST has no undelete)."""
        session = self.token()["access_token"]
        envelope = (
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
            ' xmlns:urn="urn:partner.soap.sforce.com"><soapenv:Header>'
            f"<urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader>"
            f"<urn:CallOptions><urn:client>{client}</urn:client></urn:CallOptions>"
            "</soapenv:Header><soapenv:Body><urn:undelete>"
            + "".join(f"<urn:ids>{record_id}</urn:ids>" for record_id in record_ids)
            + "</urn:undelete></soapenv:Body></soapenv:Envelope>"
        )
        with self.emulator.http() as http:
            response = http.post(
                f"/services/Soap/u/{API_VERSION}/", content=envelope, headers={"SOAPAction": "undelete"}
            )
        response.raise_for_status()
        assert response.text.count("<success>true</success>") == len(record_ids), response.text

    def merge(self, object_type: str, master: str, *losers: str, client: str = CLIENT) -> None:
        """Merge ``losers`` into ``master`` with the partner SOAP API's ``merge`` (REST has none)."""
        session = self.token()["access_token"]
        envelope = (
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
            ' xmlns:urn="urn:partner.soap.sforce.com" xmlns:urn1="urn:sobject.partner.soap.sforce.com">'
            f"<soapenv:Header><urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader>"
            f"<urn:CallOptions><urn:client>{client}</urn:client></urn:CallOptions></soapenv:Header>"
            "<soapenv:Body><urn:merge><urn:request><urn:masterRecord>"
            f"<urn1:type>{object_type}</urn1:type><urn1:Id>{master}</urn1:Id></urn:masterRecord>"
            + "".join(f"<urn:recordToMergeIds>{loser}</urn:recordToMergeIds>" for loser in losers)
            + "</urn:request></urn:merge></soapenv:Body></soapenv:Envelope>"
        )
        with self.emulator.http() as http:
            response = http.post(f"/services/Soap/u/{API_VERSION}/", content=envelope, headers={"SOAPAction": "merge"})
        response.raise_for_status()
        assert response.text.count("<success>true</success>") == 1, response.text

    def salesforce(self, client: str = CLIENT) -> Any:
        """simple-salesforce, unchanged, stamping ``Sforce-Call-Options: client=<client>``.

        Typed Any: simple-salesforce resolves objects dynamically (``sf.Account``), which mypy cannot follow.
        """
        token = self.token()
        session = requests.Session()
        session.trust_env = False
        session.verify = self.emulator.ca_cert
        session.headers["Sforce-Call-Options"] = f"client={client}"
        return Salesforce(
            instance_url=token["instance_url"], session_id=token["access_token"], version=API_VERSION, session=session
        )

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.emulator.admin(method, f"/orgs/{self.org_id}{path}", body)
        return response.json() if response.content else None


def create_org(
    emulator: EmulatorProcess, *, objects: dict[str, Any] | None = None, user_options: dict[str, Any] | None = None
) -> Org:
    """A private org; ``user_options`` adds to its one user's spec (e.g. ``{"view_setup": False}``)."""
    alias = f"cdc-{uuid.uuid4().hex[:10]}"
    username = f"admin@{alias}.example"
    password = f"pw-{uuid.uuid4().hex}"
    client_id = f"duplex-{alias}"
    client_secret = uuid.uuid4().hex
    spec = {
        "alias": alias,
        "name": alias,
        "edition": "enterprise",
        "licenses": 50,
        "users": [{"username": username, "password": password, "last_name": "Admin", **(user_options or {})}],
        "clients": [{"name": "duplex", "client_id": client_id, "client_secret": client_secret, "pkce_required": False}],
        "objects": objects or {},
    }
    created = emulator.admin("POST", "/orgs", spec).json()
    return Org(emulator, created["org_id"], alias, username, password, client_id, client_secret)


def tenant_document(
    tenant_id: str, org: Org, objects: Sequence[str], *, cdc: bool = True, poll_seconds: int = 5, cap: int = 100_000
) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": tenant_id},
        "spec": {
            "salesforce": {
                "instanceUrl": org.emulator.instance_url,
                "apiVersion": API_VERSION,
                "auth": {
                    "mode": "password",
                    "clientId": org.client_id,
                    "clientSecret": {"secretRef": {"env": f"DUPLEX_SECRET_SF_{tenant_id.upper().replace('-', '_')}"}},
                    "username": org.username,
                    "password": {
                        "secretRef": {"env": f"DUPLEX_SECRET_SF_PASSWORD_{tenant_id.upper().replace('-', '_')}"}
                    },
                },
                "dailyApiCap": cap,
                "callOptionsClient": CALL_OPTIONS_CLIENT,
            },
            "sync": {"cdc": cdc, "pollIntervalSeconds": poll_seconds},
            "objects": [
                {
                    # Pair names allow no '__': Partner__c pairs as partner_c.
                    "name": name.lower().replace("__", "_"),
                    "app": {"object": name.lower()},
                    "salesforce": {"object": name, "externalIdField": "Duplex_Id__c"},
                    "fields": [{"app": "name", "salesforce": "Name"}],
                }
                for name in objects
            ],
        },
    }


def secrets_for(tenant_id: str, org: Org) -> dict[str, str]:
    suffix = tenant_id.upper().replace("-", "_")
    return {f"DUPLEX_SECRET_SF_{suffix}": org.client_secret, f"DUPLEX_SECRET_SF_PASSWORD_{suffix}": org.password}


async def prepare_database(dsn: str) -> None:
    await migrate(dsn)


async def configure_tenant(dsn: str, document: dict[str, Any]) -> None:
    config = parse_tenant_config(document)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO tenants (id, created_by) VALUES ($1, 'test') ON CONFLICT DO NOTHING", config.tenant_id
        )
        await connection.execute(
            "INSERT INTO config_versions (tenant_id, version, document, sha256, applied_by)"
            " VALUES ($1, (SELECT coalesce(max(version), 0) + 1 FROM config_versions WHERE tenant_id = $1),"
            " $2::jsonb, $3, 'test')",
            config.tenant_id,
            canonical_json(config),
            config_sha256(config),
        )
    finally:
        await connection.close()


@dataclass
class ChangeReader:
    """Everything published on crm-changes since the reader started."""

    consumer: AIOKafkaConsumer
    changes: list[RecordChanged] = field(default_factory=list)

    async def until(self, done: Callable[[list[RecordChanged]], bool], *, within: float = 30.0) -> list[RecordChanged]:
        deadline = time.monotonic() + within
        while not done(self.changes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                summary = [(c.object_type, c.record_id, c.kind) for c in self.changes[-20:]]
                raise AssertionError(f"timed out with {len(self.changes)} changes; last: {summary}")
            await self._read(wait_ms=int(min(remaining, 0.5) * 1000))
        return self.changes

    async def drained(self, *, within: float = 30.0) -> list[RecordChanged]:
        """Everything published up to now, on every partition (``until`` stops at what it waits for)."""
        ends = await self.consumer.end_offsets(list(self.consumer.assignment()))
        deadline = time.monotonic() + within
        while [p for p, end in ends.items() if await self.consumer.position(p) < end]:
            assert time.monotonic() < deadline, f"not drained within {within}s"
            await self._read(wait_ms=500)
        return self.changes

    async def _read(self, *, wait_ms: int) -> None:
        batch = await self.consumer.getmany(timeout_ms=wait_ms)
        for records in batch.values():
            for record in records:
                change = RecordChanged()
                change.ParseFromString(record.value)
                assert record.key == f"{change.tenant_id}/{change.object_type}/{change.record_id}".encode()
                self.changes.append(change)

    def of(self, record_id: str) -> list[RecordChanged]:
        return [c for c in self.changes if c.record_id == record_id]


@contextlib.asynccontextmanager
async def change_reader(kafka_bootstrap: str, topic_names: TopicNames) -> AsyncIterator[ChangeReader]:
    consumer = AIOKafkaConsumer(
        topic_names(Topic.CRM_CHANGES),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        yield ChangeReader(consumer)
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Tenant:
    """A tenant configured for a private org of its own."""

    id: str
    org: Org

    @property
    def secrets(self) -> dict[str, str]:
        return secrets_for(self.id, self.org)


@dataclass(frozen=True)
class Harness:
    """One test's emulator, Kafka topics and fresh, migrated database, and cdc-ingest over them."""

    emulator: EmulatorProcess
    kafka_bootstrap: str
    topic_names: TopicNames
    dsn: str

    async def tenant(
        self,
        objects: Sequence[str],
        *,
        org_objects: dict[str, Any] | None = None,
        user_options: dict[str, Any] | None = None,
        poll_seconds: int = 5,
        cap: int = 100_000,
    ) -> Tenant:
        """A new org (``org_objects`` and ``user_options`` as in :func:`create_org`) and a tenant
        syncing ``objects`` of it."""
        org = create_org(self.emulator, objects=org_objects, user_options=user_options)
        tenant = Tenant(f"t-{uuid.uuid4().hex[:8]}", org)
        await configure_tenant(self.dsn, tenant_document(tenant.id, org, objects, poll_seconds=poll_seconds, cap=cap))
        return tenant

    def settings(self, **overrides: Any) -> CdcIngestSettings:
        """cdc-ingest's settings for this stack, quick to renew leases and reconnect."""
        values: dict[str, Any] = {
            "pubsub_target": self.emulator.grpc_target,
            "ca_file": self.emulator.ca_cert,
            "lease_renew_seconds": 0.5,
            "lease_ttl_seconds": 5.0,
            "poll_overlap_seconds": 2.0,
            "reconnect_base_delay_seconds": 0.1,
            "reconnect_max_delay_seconds": 1.0,
            "bulk_poll_seconds": 0.2,
        } | overrides
        return CdcIngestSettings(
            kafka=KafkaSettings(bootstrap_servers=self.kafka_bootstrap, topic_prefix=self.topic_names.prefix),
            postgres=PostgresSettings(dsn=self.dsn, pool_min_size=1, pool_max_size=4),
            # The emulator listens on 127.0.0.1, which only a development deployment may call.
            policy=PolicySettings(development=True),
            **values,
        )

    def running(
        self,
        tenant: Tenant,
        settings: CdcIngestSettings | None = None,
        *,
        governed: bool = False,
        telemetry: Telemetry | None = None,
    ) -> AbstractAsyncContextManager[RunningCdcIngest]:
        """cdc-ingest in-process (``settings`` by default: :meth:`settings`); its calls are not
        budgeted unless ``governed`` (then the governor at ``settings.governor_target`` grants them,
        as in production)."""
        return run(
            settings or self.settings(),
            telemetry,
            environ=tenant.secrets,
            budget_for=None if governed else unlimited_budgets(),
        )

    def reader(self) -> AbstractAsyncContextManager[ChangeReader]:
        """A reader of everything published on crm-changes from now on."""
        return change_reader(self.kafka_bootstrap, self.topic_names)


async def sync_log(dsn: str, tenant_id: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT * FROM sync_log WHERE tenant_id = $1 ORDER BY id", tenant_id)
    finally:
        await connection.close()
    return [dict(row) | {"detail": json.loads(row["detail"])} for row in rows]


async def wait_backfilled(dsn: str, tenant_id: str, objects: int, within: float = 30.0) -> None:
    """Until ``objects`` backfills have completed (first connection)."""
    deadline = time.monotonic() + within
    while sum(row["event"] == "cdc.backfill.completed" for row in await sync_log(dsn, tenant_id)) < objects:
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill not finished: {await sync_log(dsn, tenant_id)}")
        await asyncio.sleep(0.1)


async def checkpoint_of(dsn: str, tenant_id: str) -> int:
    """The tenant's checkpointed replay id as a number (0: none yet)."""
    connection = await asyncpg.connect(dsn)
    try:
        replay = await connection.fetchval("SELECT replay_id FROM replay_checkpoints WHERE tenant_id = $1", tenant_id)
    finally:
        await connection.close()
    return int.from_bytes(bytes(replay), "big") if replay is not None else 0


async def wait_checkpoint(dsn: str, tenant_id: str, at_least: bytes, within: float = 20.0) -> None:
    """Until the checkpoint covers ``at_least`` (a replay id)."""
    deadline = time.monotonic() + within
    wanted = int.from_bytes(at_least, "big")
    while await checkpoint_of(dsn, tenant_id) < wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"checkpoint stuck below {wanted}")
        await asyncio.sleep(0.05)


async def in_thread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """simple-salesforce is synchronous; keep the event loop (and cdc-ingest in it) running."""
    return await asyncio.to_thread(call, *args, **kwargs)


@contextlib.contextmanager
def governor_process(dsn: str, log: Path) -> Iterator[str]:
    """The rate-limit-governor as its own process; its target (host:port)."""
    (port,) = pick_free_ports(1)
    env = {**os.environ, "POSTGRES_DSN": dsn, "GOVERNOR_PORT": str(port)}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.rate_limit_governor"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_serving(f"127.0.0.1:{port}", log)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def start_service(
    emulator: EmulatorProcess,
    kafka_bootstrap: str,
    topic_names: TopicNames,
    dsn: str,
    secrets: dict[str, str],
    log: Path,
    *,
    governor: str,
    **settings: str,
) -> subprocess.Popen[bytes]:
    """cdc-ingest as its own process (``python -m services.cdc_ingest``), its calls granted by the
    governor at ``governor`` (see :func:`governor_process`); ``settings`` are CDC_INGEST_* values."""
    env = {
        **os.environ,
        **secrets,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_names.prefix,
        "POSTGRES_DSN": dsn,
        "CDC_INGEST_PUBSUB_TARGET": emulator.grpc_target,
        "CDC_INGEST_CA_FILE": emulator.ca_cert,
        "CDC_INGEST_LEASE_TTL_SECONDS": "3",
        "CDC_INGEST_LEASE_RENEW_SECONDS": "0.5",
        "CDC_INGEST_POLL_OVERLAP_SECONDS": "2",
        "CDC_INGEST_GOVERNOR_TARGET": governor,
        "TELEMETRY_LOG_LEVEL": "WARNING",
        # The emulator listens on 127.0.0.1, which only a development deployment may call.
        "DUPLEX_DEVELOPMENT": "true",
        **{f"CDC_INGEST_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cdc_ingest"], cwd=ROOT, env=env, stdout=out, stderr=out
        )

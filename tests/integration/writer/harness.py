"""What the writer's integration and e2e tests share: tenants, commands, and reading results back."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from faststream.kafka import KafkaBroker

from devstack.emulator import API_VERSION, EmulatorProcess
from services.admin.config_store import ConfigStore
from services.common.codec import link_key
from services.common.contract import to_field_value
from services.common.db import migrate
from services.common.kafka import make_broker
from services.common.salesforce import SecretResolver, env_secrets
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.tenant_config.policy import PolicySettings
from services.common.topics import Topic, TopicNames
from services.common.values import Value
from services.writer.settings import WriterSettings

WriteRecords = write_records_pb2.WriteRecords
WriteSettled = write_settled_pb2.WriteSettled
# The emulator listens on 127.0.0.1, which only a development deployment may call.
DEVELOPMENT = PolicySettings(development=True)
SUCCEEDED = write_settled_pb2.WRITE_STATUS_SUCCEEDED
SUPERSEDED = write_settled_pb2.WRITE_STATUS_SUPERSEDED
REJECTED = write_settled_pb2.WRITE_STATUS_REJECTED


def org_client(emulator: EmulatorProcess, org: str) -> tuple[str, str]:
    """(client_id, client_secret) of the Duplex connected app of a seeded org (acme or globex)."""
    if org == "acme":
        return str(emulator.info["client_id"]), str(emulator.info["client_secret"])
    return f"duplex-{org}-client", f"duplex-{org}-secret"


def tenant_document(
    name: str,
    emulator: EmulatorProcess,
    *,
    org: str = "acme",
    cap: int = 100_000,
    ingestion: str = "rest",
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    client_id, _ = org_client(emulator, org)
    return {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "salesforce": {
                "instanceUrl": emulator.instance_url,
                "apiVersion": api_version,
                "auth": {
                    "mode": "client_credentials",
                    "clientId": client_id,
                    "clientSecret": {"secretRef": {"env": secret_env(name)}},
                },
                "dailyApiCap": cap,
                "callOptionsClient": f"duplex-{name}",
            },
            "sync": {"backfill": {"ingestion": ingestion}},
        },
    }


def secret_env(tenant: str) -> str:
    return f"DUPLEX_SECRET_SF_{tenant.upper().replace('-', '_')}"


def secrets_for(emulator: EmulatorProcess, tenants: dict[str, str]) -> dict[str, str]:
    """Environment of secrets for ``{tenant: org}``."""
    return {secret_env(t): org_client(emulator, org)[1] for t, org in tenants.items()}


def resolver(emulator: EmulatorProcess, tenants: dict[str, str]) -> SecretResolver:
    return env_secrets(secrets_for(emulator, tenants))


async def prepare_database(dsn: str, documents: Iterable[dict[str, Any]]) -> None:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(d) for d in documents], "test")
    finally:
        await conn.close()


def writer_settings(
    bootstrap: str, names: TopicNames, dsn: str, emulator: EmulatorProcess, **overrides: Any
) -> WriterSettings:
    overrides.setdefault("commit_interval_ms", 100)
    overrides.setdefault("shutdown_grace_seconds", 1.0)
    overrides.setdefault("policy", DEVELOPMENT)
    return WriterSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=names.prefix),
        postgres=PostgresSettings(dsn=dsn),
        salesforce_ca_file=emulator.ca_cert,
        **overrides,
    )


def command(
    tenant: str,
    records: list[tuple[str, dict[str, Value]]],
    *,
    operation: int = write_records_pb2.OPERATION_UPSERT,
    crm_object: str = "Account",
    record_ids: dict[str, str] | None = None,
    version: int = 1,
    priority: int = write_records_pb2.PRIORITY_LIVE,
) -> WriteRecords:
    """A command writing ``records`` as (external id = link id, fields)."""
    message = WriteRecords(
        command_id=uuid.uuid4().hex,
        tenant_id=tenant,
        crm_object=crm_object,
        operation=operation,  # type: ignore[arg-type]
        external_id_field="Duplex_Id__c",
        priority=priority,  # type: ignore[arg-type]
    )
    for link, fields in records:
        record = message.records.add(
            link_id=link, external_id_value=link, version=version, record_id=(record_ids or {}).get(link, "")
        )
        for name, value in fields.items():
            record.fields[name].CopyFrom(to_field_value(value))
    message.origin_commit_time.GetCurrentTime()
    return message


@asynccontextmanager
async def upstream(bootstrap: str) -> AsyncIterator[KafkaBroker]:
    """The conflict-resolver's side: a broker publishing commands with the shared codec."""
    broker = make_broker(KafkaSettings(bootstrap_servers=bootstrap), service_name="conflict-resolver")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def send(broker: KafkaBroker, names: TopicNames, commands: Iterable[WriteRecords]) -> int:
    topic = names(Topic.CRM_WRITES)
    futures = [
        await broker.publish(c, topic, key=link_key(c.tenant_id, c.records[0].link_id), no_confirm=True)
        for c in commands
    ]
    await asyncio.gather(*futures)
    return len(futures)


class TopicReader:
    """Reads a topic from the beginning, incrementally (all partitions)."""

    def __init__(self, bootstrap: str, names: TopicNames, topic: Topic) -> None:
        self.bootstrap = bootstrap
        self.topic = names(topic)
        self.partitions = names.table.topics[topic].partitions
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200)
        self.records.extend(r for rs in batch.values() for r in rs)

    async def until(self, condition: Callable[[], bool], *, within: float, what: str = "") -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: {len(self.records)} records after {within}s; waiting for {what}")
            await self.poll()


def outcomes(reader: TopicReader) -> list[WriteSettled]:
    result = []
    for record in reader.records:
        event = WriteSettled()
        event.ParseFromString(record.value)
        result.append(event)
    return result


def org_id(emulator: EmulatorProcess, org: str) -> str:
    if org == "acme":
        return str(emulator.info["org_id"])
    orgs = emulator.admin("GET", "/orgs").json()
    return str(next(o["org_id"] for o in orgs if o.get("alias") == org or o.get("name", "").lower().startswith(org)))


def api_used(emulator: EmulatorProcess, org: str = "acme") -> int:
    """API calls the emulator counted for the org in its rolling 24 hours."""
    return int(emulator.admin("GET", f"/orgs/{org_id(emulator, org)}").json()["api_usage"]["used"])


def salesforce(emulator: EmulatorProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A REST call as the org's admin, a person (not through Duplex, so not through the governor)."""
    token = emulator.password_token()
    with httpx.Client(verify=ssl.create_default_context(cafile=emulator.ca_cert), timeout=30) as client:
        response = client.request(
            method,
            f"{token['instance_url']}/services/data/v{API_VERSION}{path}",
            headers={"Authorization": f"Bearer {token['access_token']}"},
            **kwargs,
        )
    response.raise_for_status()
    return response


def soql(emulator: EmulatorProcess, query: str) -> dict[str, Any]:
    """A SOQL query as the org's admin."""
    body: dict[str, Any] = salesforce(emulator, "GET", "/query", params={"q": query}).json()
    return body


def count_accounts(emulator: EmulatorProcess, prefix: str) -> int:
    return int(soql(emulator, f"SELECT COUNT() FROM Account WHERE Duplex_Id__c LIKE '{prefix}%'")["totalSize"])


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum over partitions of the group's committed offsets on ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic)

"""Private servers for a benchmark: a Kafka broker and a PostgreSQL server on free ports, topics created."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from devstack.kafka import KafkaPorts, KafkaServer
from devstack.ports import pick_free_ports
from devstack.postgres import PostgresServer
from services.common.tenant_config import canonical_json, config_sha256, parse_tenant_config
from services.common.topic_admin import ensure_topics
from services.common.topics import TopicNames, load_topic_table


@dataclass(frozen=True)
class BenchStack:
    root: Path
    bootstrap_servers: str
    dsn: str
    names: TopicNames


@asynccontextmanager
async def bench_stack(prefix: str) -> AsyncIterator[BenchStack]:
    """Kafka and PostgreSQL in a temporary folder, stopped (and the folder removed) afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-") as tmp:
        root = Path(tmp)
        # PostgreSQL runs as its own account when we are root; it must reach its data directory.
        await asyncio.to_thread(root.chmod, 0o755)
        broker_port, controller_port, pg_port = pick_free_ports(3)
        kafka = KafkaServer(root / "kafka", KafkaPorts(broker_port, controller_port))
        postgres = PostgresServer(root / "postgres", pg_port, durable=False)
        async with AsyncExitStack() as stack:
            await asyncio.to_thread(kafka.start)
            stack.callback(kafka.stop)
            await asyncio.to_thread(postgres.start)
            stack.callback(postgres.stop)
            await kafka.wait_ready()
            await postgres.wait_ready()
            names = TopicNames(load_topic_table(), prefix=f"{prefix}.")
            await ensure_topics(kafka.bootstrap_servers, names.table, names.prefix)
            yield BenchStack(root, kafka.bootstrap_servers, postgres.dsn, names)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def configure_tenant(dsn: str, document: dict[str, Any]) -> None:
    """Store ``document`` as its tenant's first configuration version, as ``duplex config apply`` would."""
    config = parse_tenant_config(document)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("INSERT INTO tenants (id, created_by) VALUES ($1, 'bench')", config.tenant_id)
        await connection.execute(
            "INSERT INTO config_versions (tenant_id, version, document, sha256, applied_by)"
            " VALUES ($1, 1, $2::jsonb, $3, 'bench')",
            config.tenant_id,
            canonical_json(config),
            config_sha256(config),
        )
    finally:
        await connection.close()

"""Composition root: settings in, a running writer out.

Offsets with batching
=====================
The crm-writes subscriber uses ``AckPolicy.MANUAL`` and never calls ``msg.ack()`` (which would
commit *every* consumed position, including commands still waiting in a batch). Instead:

1. the handler decodes a command, registers its offset in the :class:`OffsetTracker` with the
   number of record writes it carries, hands the writes to its tenant's :class:`TenantWriter`
   and returns (waiting only when that tenant holds too many unsettled writes);
2. when a write settles, :class:`Settlement` produces its outcomes (and DLQ record, and sync-log
   rows) durably, then tells the tracker;
3. a committer task commits, per partition, the lowest offset that still has unsettled writes
   (or one past the last seen), with explicit offsets, every ``commit_interval_ms`` and on
   partition revocation and shutdown.

A crash therefore replays exactly the commands without every outcome produced (and the settled
ones after them); the replay is harmless because creates are upserts on the external id,
updates and deletes are by id, and outcomes are applied by version downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from aiokafka import ConsumerRebalanceListener, TopicPartition
from duplex.writer.v1 import write_records_pb2
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from faststream.params import NoCast

from services.common.db import create_pool
from services.common.governor_client import GovernorBudget
from services.common.kafka import EXIT_HALTED, ServiceKafka, make_kafka
from services.common.metrics import Metrics
from services.common.salesforce import CallBudget, SalesforceClient, SecretResolver
from services.common.telemetry import Telemetry
from services.common.tenant_config import SalesforceSpec, load_current
from services.common.topics import Topic, TopicNames, load_topic_table
from services.writer.batching import Ingestion, RecordWrite
from services.writer.commands import Delivery, record_writes
from services.writer.executor import BatchExecutor
from services.writer.offsets import OffsetTracker, Partition
from services.writer.settings import WriterSettings
from services.writer.settle import Settlement
from services.writer.tenant import TenantOptions, TenantResources, TenantWriter

log = logging.getLogger(__name__)

WriteRecords = write_records_pb2.WriteRecords

COMMIT_TIMEOUT_SECONDS = 10.0


@dataclass
class _CachedTenant:
    spec: SalesforceSpec
    resources: TenantResources
    loaded_at: float


@dataclass
class Writer:
    """The writer's state while it runs; the handler and the tasks share it."""

    settings: WriterSettings
    kafka: ServiceKafka
    secrets: SecretResolver
    budget: CallBudget | None = None
    http: httpx.AsyncClient | None = None
    database: asyncpg.Pool | None = None
    metrics: Metrics | None = None
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)
    tenants: dict[str, TenantWriter] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    consumer: Any = None
    _tokens: itertools.count[int] = field(default_factory=itertools.count)
    _cache: dict[str, _CachedTenant] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _settlement: Settlement | None = None
    _commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # ------------------------------------------------------------------ consuming

    async def handle(self, command: WriteRecords, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)  # not a batch subscriber
        self.consumer = msg.consumer
        token = str(next(self._tokens))
        partition: Partition = (raw.topic, raw.partition)
        writes, refused = record_writes(command, token)
        delivery = Delivery(
            token=token,
            command_id=command.command_id,
            tenant_id=command.tenant_id,
            partition=partition,
            offset=raw.offset,
            backfill=command.priority == write_records_pb2.PRIORITY_BACKFILL,
            origin_commit_time=command.origin_commit_time if command.HasField("origin_commit_time") else None,
            key=raw.key,
            headers=tuple(raw.headers or ()),
            timestamp_ms=raw.timestamp,
        )
        items = len(writes) + len(refused)
        self.tracker.seen(partition, raw.offset, items)
        if items == 0:
            return
        self.deliveries[token] = delivery
        self.remaining[token] = items
        tenant = self.tenant(command.tenant_id)
        tenant.submit(writes, refused)
        await tenant.room()

    def tenant(self, tenant_id: str) -> TenantWriter:
        writer = self.tenants.get(tenant_id)
        if writer is None:
            assert self._settlement is not None, "the writer is not running"
            s = self.settings
            writer = TenantWriter(
                tenant_id,
                resources=lambda: self.resources(tenant_id),
                settler=self._settlement,
                is_backfill=self._is_backfill,
                options=TenantOptions(
                    window=timedelta(milliseconds=s.batch_window_ms),
                    max_wait=timedelta(milliseconds=s.batch_max_wait_ms),
                    bulk_threshold=s.bulk_threshold,
                    bulk_max_records=s.bulk_max_records,
                    concurrency=s.tenant_concurrency,
                    max_pending=s.max_pending_per_tenant,
                    max_record_attempts=s.max_record_attempts,
                ),
            )
            self.tenants[tenant_id] = writer
            self.tasks[tenant_id] = asyncio.get_running_loop().create_task(writer.run(), name=f"writer-{tenant_id}")
        return writer

    def _is_backfill(self, write: RecordWrite) -> bool:
        return all(self.deliveries[t].backfill for t in write.all_command_ids if t in self.deliveries)

    async def resources(self, tenant_id: str) -> TenantResources:
        """The tenant's executor and ingestion mode, from its current configuration (cached)."""
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(tenant_id)
            if cached is not None and time.monotonic() - cached.loaded_at < self.settings.config_ttl_seconds:
                return cached.resources
            assert self.database is not None
            assert self.http is not None
            assert self.budget is not None
            async with self.database.acquire() as conn:
                config = await load_current(conn, tenant_id)
            spec = config.spec.salesforce
            ingestion = Ingestion(config.spec.sync.backfill.ingestion.value)
            if cached is not None and cached.spec == spec:
                # Same connection settings: keep the client and its session.
                executor = cached.resources.executor
            else:
                client = SalesforceClient(
                    tenant_id, spec, secrets=self.secrets, budget=self.budget, http=self.http, metrics=self.metrics
                )
                executor = BatchExecutor(client)
            resources = TenantResources(executor, ingestion)
            self._cache[tenant_id] = _CachedTenant(spec, resources, time.monotonic())
            return resources

    # ------------------------------------------------------------------ committing

    async def commit(self, only: list[Partition] | None = None) -> None:
        """Commit every partition's position that moved (see the module doc)."""
        consumer = self.consumer
        if consumer is None:
            return
        async with self._commit_lock:
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            positions = {
                p: o for p, o in self.tracker.committable().items() if p in assigned and (only is None or p in only)
            }
            if not positions:
                return
            try:
                # Bounded: aiokafka retries a commit for as long as the coordinator is unknown, and
                # forever once the consumer is closing. A commit given up is replayed, never lost.
                async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in positions.items()})
            except Exception as exc:
                # A rebalance moved the partition or the broker is away: the next owner (or this
                # one, on the next tick) goes on from the last commit that landed.
                log.warning("offset commit failed", extra={"reason": str(exc) or type(exc).__name__})
                return
            self.tracker.committed(positions)

    async def commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            await self.commit()

    async def drain(self, grace: float) -> None:
        """Give held writes up to ``grace`` seconds to settle (shutdown)."""
        deadline = time.monotonic() + grace
        # Settling is spread over every tenant's tasks; polling the one counter is simplest.
        while self.tracker.unfinished() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        lost = [(tp.topic, tp.partition) for tp in revoked]
        await self._writer.commit(only=lost)
        self._writer.tracker.forget(lost)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


@dataclass
class WriterApp:
    settings: WriterSettings
    writer: Writer
    kafka: ServiceKafka
    budget: CallBudget | None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Writer]:
        """The writer consuming and writing until the block exits (then drained and closed)."""
        s = self.settings
        writer = self.writer
        async with AsyncExitStack() as stack:
            database = await stack.enter_async_context(create_pool(s.postgres))
            writer.database = database
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=s.salesforce_ca_file) if s.salesforce_ca_file else True
            )
            writer.http = await stack.enter_async_context(
                httpx.AsyncClient(verify=verify, timeout=s.salesforce_timeout_seconds)
            )
            if self.budget is None:
                budget, channel = GovernorBudget.connect(
                    s.governor_target, max_wait=timedelta(seconds=s.governor_max_wait_seconds)
                )
                stack.push_async_callback(channel.close, None)
                writer.budget = budget
            else:
                writer.budget = self.budget
            names = self.kafka.topic_names
            writer._settlement = Settlement(
                publish=self.kafka.broker.publish,
                outcomes_topic=names(Topic.WRITE_OUTCOMES),
                dead_letter_topic=names(names.dlq_of(Topic.CRM_WRITES)),
                source_topic=names(Topic.CRM_WRITES),
                database=database,
                tracker=writer.tracker,
                deliveries=writer.deliveries,
                remaining=writer.remaining,
                metrics=writer.metrics,
            )
            committer = asyncio.get_running_loop().create_task(writer.commit_loop(), name="writer-commits")
            await self.kafka.broker.start()
            try:
                yield writer
            finally:
                await self._shut_down(committer)

    async def _shut_down(self, committer: asyncio.Task[None]) -> None:
        """Stop fetching, let held writes settle, commit once more, and only then close the consumer.

        The order matters: a commit issued while aiokafka closes its consumer never returns.
        """
        writer = self.writer
        consumer = writer.consumer
        if consumer is not None:
            consumer.pause(*consumer.assignment())
        await writer.drain(self.settings.shutdown_grace_seconds)
        committer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await committer
        await writer.commit()
        writer.consumer = None
        for subscriber in self.kafka.broker.subscribers:
            await subscriber.stop()
        for task in writer.tasks.values():
            task.cancel()
        if writer.tasks:
            # Bounded: a task that does not finish after cancellation must not hold the process.
            _, stuck = await asyncio.wait(writer.tasks.values(), timeout=self.settings.shutdown_grace_seconds + 5)
            if stuck:
                log.error("writer tasks did not stop", extra={"tasks": sorted(t.get_name() for t in stuck)})
        await self.kafka.broker.stop()


def build_app(
    settings: WriterSettings,
    *,
    secrets: SecretResolver,
    telemetry: Telemetry | None = None,
    budget: CallBudget | None = None,
) -> WriterApp:
    """Wire the writer: Kafka subscriber and publishers, and (when it runs) Postgres, HTTP and the governor."""
    names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=names, telemetry=telemetry)
    writer = Writer(settings=settings, kafka=kafka, secrets=secrets, metrics=telemetry.metrics if telemetry else None)

    @kafka.subscriber(
        Topic.CRM_WRITES,
        message_type=WriteRecords,
        ack_policy=AckPolicy.MANUAL,
        listener=_Rebalance(writer),
    )
    async def on_write_records(command: NoCast[WriteRecords], msg: KafkaMessage) -> None:
        await writer.handle(command, msg)

    return WriterApp(settings, writer, kafka, budget)


async def serve(settings: WriterSettings, *, secrets: SecretResolver, telemetry: Telemetry | None = None) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until the consumer halts (exit 70)."""
    app = build_app(settings, secrets=secrets, telemetry=telemetry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app.kafka.halt.on_trip(lambda _error: stop.set())
    async with app.running():
        await stop.wait()
    if app.kafka.halt.error is not None:
        log.critical("writer halted: %s", app.kafka.halt.error)
        return EXIT_HALTED
    return 0

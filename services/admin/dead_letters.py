"""Dead letters as an operator handles them: a tenant's entries read off the dead-letter topics,
replayed to the topic they came from once the cause is fixed, or discarded with a reason.

An entry is named by its place: ``<dead-letter topic>:<partition>:<offset>`` (logical topic name,
such as ``app_changes_dlq:3:152``). A replay sends the original record again, with its key (so the
record's changes keep their order) and its own headers; the event id inside is the original's, so
a consumer that already applied it (a replay after a lost answer) changes nothing. What was done is
kept in ``dead_letter_actions``: a replayed or discarded entry is never replayed again.

Reading scans the dead-letter topics from their start (they are small, and retention bounds them);
a tenant's entries are those whose key is the tenant's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.admin.contract import MESSAGES, decoded
from services.admin.sync_log_search import links_of, record_ids
from services.common.codec import KEY_SEPARATOR
from services.common.db import Connection
from services.common.dlq import ERROR_CLASS, ERROR_REASON, FAILED_AT, HEADER_PREFIX, SERVICE
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.common.topic_admin import partitions_of
from services.common.topics import Topic, TopicNames

REPLAYED_FROM: Final = "duplex-replayed-from"
_PLACE = re.compile(r"^(?P<topic>[a-z_]+):(?P<partition>\d{1,9}):(?P<offset>\d{1,18})$")
# A scan reads up to the end offsets it found at its start; these bound a broker that stops answering.
_POLL_MS: Final = 1000
_READ_SECONDS: Final = 60


class KafkaUnavailableError(RuntimeError):
    """Kafka did not answer: nothing was read or replayed."""


@dataclass(frozen=True, order=True)
class Place:
    """Where a dead letter is: its dead-letter topic (logical), partition and offset."""

    topic: Topic
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Place:
        """Raises ValueError with a message for the user."""
        match = _PLACE.fullmatch(text)
        topic = match["topic"] if match else ""
        if match is None or topic not in DLQ_SOURCES:
            topics = ", ".join(sorted(DLQ_SOURCES))
            raise ValueError(f"not a dead letter's id: <topic>:<partition>:<offset>, the topic one of {topics}")
        return cls(Topic(topic), int(match["partition"]), int(match["offset"]))


def _sources(names: Iterable[Topic]) -> dict[Topic, Topic]:
    return {Topic(f"{source}_dlq"): source for source in names}


# Each dead-letter topic and the topic whose rejects it holds.
DLQ_SOURCES: Final[Mapping[Topic, Topic]] = _sources(MESSAGES)


@dataclass(frozen=True)
class Selection:
    """Which of a tenant's dead letters a listing, or a replay of "all", means: those of a record
    (any of its ids: app, Salesforce, link) and those that failed since a time; None: any."""

    ids: frozenset[str] | None = None
    since: datetime | None = None

    def holds(self, letter: DeadLetter) -> bool:
        if self.since is not None and (letter.failed_at is None or letter.failed_at < self.since):
            return False
        # Keys are tenant/object/record (changes) or tenant/link (mapped changes, writes, outcomes):
        # the last part names the record.
        return self.ids is None or letter.record_key.rsplit(KEY_SEPARATOR, 1)[-1] in self.ids


async def record_selection(db: Connection, tenant_id: str, record: str) -> frozenset[str]:
    """Every id the record goes by: as given (15 and 18 characters for a Salesforce id), its links,
    and the other side's id each link knows."""
    links = await links_of(db, tenant_id, record)
    known = {i for link in links for i in (link.link_id, link.app_record_id, link.salesforce_id) if i}
    return frozenset(record_ids(record)) | known


@dataclass(frozen=True)
class Action:
    action: str
    reason: str | None
    actor: str
    at: datetime


@dataclass(frozen=True)
class DeadLetter:
    place: Place
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def source(self) -> Topic:
        return DLQ_SOURCES[self.place.topic]

    def header(self, name: str) -> str | None:
        return next((v.decode("utf-8", "replace") for k, v in self.headers if k == name), None)

    @property
    def record_key(self) -> str:
        return (self.key or b"").decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        return self.header(ERROR_REASON) or ""

    @property
    def error_class(self) -> str:
        return self.header(ERROR_CLASS) or ""

    @property
    def service(self) -> str:
        return self.header(SERVICE) or ""

    @property
    def failed_at(self) -> datetime | None:
        text = self.header(FAILED_AT)
        try:
            return datetime.fromisoformat(text) if text else None
        except ValueError:
            return None

    def payload(self) -> dict[str, Any] | None:
        """The record decoded as its topic's message, None when it is not one (what got it rejected)."""
        return decoded(self.source, self.value)

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original record's headers (not the dead-lettering's), and where it was replayed from."""
        dead_lettering = (HEADER_PREFIX + "original-", HEADER_PREFIX + "error-", FAILED_AT, SERVICE, REPLAYED_FROM)
        kept = [(k, v) for k, v in self.headers if not k.startswith(dead_lettering)]
        return [*kept, (REPLAYED_FROM, str(self.place).encode())]


class DeadLetterTopics:
    """The dead-letter topics of one deployment, read and replayed through short-lived clients; and
    the deployment's other topics, for what the admin API itself publishes (:meth:`publish`)."""

    def __init__(self, kafka: KafkaSettings, names: TopicNames) -> None:
        self._kafka = kafka
        self._names = names

    async def read(self, tenant_id: str, topics: Sequence[Topic]) -> list[DeadLetter]:
        """Every entry of ``tenant_id`` in the dead-letter topics of ``topics`` (source topics)."""
        prefix = f"{tenant_id}{KEY_SEPARATOR}".encode()
        physical = {self._names(self._names.dlq_of(t)): self._names.dlq_of(t) for t in topics}
        client_id = f"{self._kafka.client_id}-admin"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=client_id,
            enable_auto_commit=False,
            # Assigned partitions start here (no group, nothing committed): a later seek could race
            # the default reset to the end.
            auto_offset_reset="earliest",
            **client_options(self._kafka),
        )
        found: list[DeadLetter] = []
        try:
            partitions = await partitions_of(
                self._kafka.bootstrap_servers, physical, client_id=client_id, options=client_options(self._kafka)
            )
            if not partitions:
                return []
            await consumer.start()
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            left = {tp for tp in partitions if ends[tp] > 0}
            async with asyncio.timeout(_READ_SECONDS):
                while left:
                    batches = await consumer.getmany(*left, timeout_ms=_POLL_MS)
                    for tp, records in batches.items():
                        found += [
                            DeadLetter(
                                Place(physical[tp.topic], tp.partition, r.offset),
                                r.key,
                                r.value or b"",
                                tuple(r.headers),
                            )
                            for r in records
                            if r.offset < ends[tp] and (r.key or b"").startswith(prefix)
                        ]
                    left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailableError(f"Kafka at {self._kafka.bootstrap_servers} did not answer: {exc!r}") from None
        finally:
            await consumer.stop()
        return sorted(found, key=lambda d: d.place)

    async def replay(self, letters: Sequence[DeadLetter]) -> None:
        """Send each entry's record to its source topic (same key, its own headers), acknowledged
        by every in-sync replica; in the given order."""
        await self._send([(letter.source, letter.key, letter.value, letter.replay_headers()) for letter in letters])

    async def publish(self, topic: Topic, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send ``records`` (key, value) to ``topic`` (logical name) as a replay is sent: acknowledged
        by every in-sync replica, in the given order. What else the admin API sends (resend requests)."""
        await self._send([(topic, key, value, []) for key, value in records])

    async def _send(self, records: Sequence[tuple[Topic, bytes | None, bytes, list[tuple[str, bytes]]]]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=f"{self._kafka.client_id}-admin",
            acks="all",
            enable_idempotence=True,
            max_request_size=self._kafka.max_request_size,
            **client_options(self._kafka),
        )
        try:
            await producer.start()
            acks = [
                await producer.send(self._names(topic), value, key=key, headers=headers)
                for topic, key, value, headers in records
            ]
            await asyncio.gather(*acks)
        except (KafkaError, OSError) as exc:
            raise KafkaUnavailableError(f"Kafka at {self._kafka.bootstrap_servers} did not answer: {exc!r}") from None
        finally:
            await producer.stop()


async def actions_of(db: Connection, tenant_id: str) -> dict[Place, Action]:
    rows = await db.fetch(
        "SELECT dlq_topic, dlq_partition, dlq_offset, action, reason, actor, at FROM dead_letter_actions"
        " WHERE tenant_id = $1",
        tenant_id,
    )
    return {
        Place(Topic(r["dlq_topic"]), r["dlq_partition"], r["dlq_offset"]): Action(
            r["action"], r["reason"], r["actor"], r["at"]
        )
        for r in rows
        if r["dlq_topic"] in DLQ_SOURCES
    }


async def record_actions(
    db: Connection, tenant_id: str, places: Sequence[Place], action: str, actor: str, reason: str | None
) -> list[Place]:
    """Record ``action`` on ``places``; the ones it was recorded on, in order. An entry another
    request acted on meanwhile is left out (its row stands), so only one request ever sends it."""
    rows = await db.fetch(
        "INSERT INTO dead_letter_actions (dlq_topic, dlq_partition, dlq_offset, tenant_id, action, reason, actor)"
        " SELECT t, p, o, $4, $5, $6, $7 FROM unnest($1::text[], $2::int[], $3::bigint[]) AS w(t, p, o)"
        " ON CONFLICT DO NOTHING RETURNING dlq_topic, dlq_partition, dlq_offset",
        [str(p.topic) for p in places],
        [p.partition for p in places],
        [p.offset for p in places],
        tenant_id,
        action,
        reason,
        actor,
    )
    recorded = {Place(Topic(r["dlq_topic"]), r["dlq_partition"], r["dlq_offset"]) for r in rows}
    return [p for p in places if p in recorded]

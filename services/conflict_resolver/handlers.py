"""The resolver's handlers: thin over :mod:`resolve`, one transaction per batch of events.

Events come in batches (see :mod:`services.common.kafka`). A batch of mapped changes is applied
in one transaction with a handful of statements: claim all event ids (a redelivered one is
skipped), lock or create every link of the batch, read their field states, then :func:`resolve`
each change in the batch's order against the state the changes before it left (so the changes
of one link apply in offset order), and write the final states, the commands sent and the sync
log at once.

The outputs of the batch are published (acks=all) inside its transaction, before it commits. A
crash in between rolls the state back and the batch comes again; since output ids and contents
derive from the input and the state it found, the second run publishes the same commands,
which the writer and the app deduplicate by id. The other order (commit, then publish) could
lose the outputs for good once the events are marked processed.

Pauses (:mod:`holding`): what the batch's pairs hold is read first in its transaction. The changes
of a pair paused both ways, or still releasing changes held so, are checked (but for their values)
and stored as they came instead of being decided: nothing is claimed, locked or logged for them,
and their offsets move on with the rest. :meth:`Resolver.release_held` decides them later through
this same path, page by page. For a pair paused one way, or still releasing outputs held so, the
changes are decided and that way's outputs stored instead of sent.

Metrics are recorded once the batch committed: echoes dropped, conflicts decided, and for every
app update the end-to-end latency from the change's origin commit to the moment the update was
published (``stage="app_update_published"``; the app applies it outside Duplex).

A change that breaks the contract or names a pair its mapping version lacks is handed back to
be dead-lettered (and written to the sync log); the rest of its batch goes on. So is an event,
change or outcome, that would fail its whole batch in PostgreSQL and with it every tenant's
events: an identifier holding U+0000 or a surrogate (``UNSTORABLE_TEXT``), a value that cannot be
compared (``INCOMPARABLE_VALUE``, a signaling NaN), and a change whose command or app update would
be over Kafka's record limit (``RECORD_TOO_LARGE``: the batch is rolled back before anything of it
is sent, and resolved again without that change). Such text in a field value is no reason to
refuse: it is stored escaped and written on exactly (the rules are in :mod:`state_codec`), and
sync log rows are made storable the same way.

The state lives in the :class:`~services.conflict_resolver.store.Store` the resolver is given:
PostgreSQL when it runs (built in :mod:`app`), memory in unit tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf.message import Message

from services.common.codec import link_key, record_key
from services.common.errors import InvalidEvent, RecordTooLargeError
from services.common.kafka import oversize
from services.common.metrics import Metrics
from services.common.pauses import Way
from services.common.tenant_config import ObjectPair
from services.common.value_codec import storable_json_text, storable_text, unstorable
from services.conflict_resolver.contract import (
    ChangeMapped,
    WriteSettled,
    app_update,
    checked_shape,
    mapped_from_proto,
    outcome_from_proto,
    write_records,
)
from services.conflict_resolver.resolve import (
    FieldRecord,
    LinkState,
    MappedChange,
    Operation,
    Resolution,
    WriteOutcome,
    WriteStatus,
    resolve,
    settle_rejected,
)
from services.conflict_resolver.store import (
    FieldKey,
    HeldInput,
    HeldOutput,
    HoldKey,
    LinkKey,
    LogRow,
    PairKey,
    SentWrite,
    Session,
    Store,
    TenantLinks,
    Transaction,
)

log = logging.getLogger(__name__)

# Held changes one pair may have decided in one round of the releaser (services/conflict_resolver/holding.py).
RELEASE_ROUND = 10_000

# Publishes (event, key) pairs in order; returns once the broker acknowledged all (acks=all).
Publish = Callable[[Sequence[tuple[Message, bytes]]], Awaitable[None]]

# A mapped change, its pair, the tenant's client id and the event it came as.
_Item = tuple[MappedChange, ObjectPair, str, ChangeMapped]

# The end_to_end_latency stage at which Duplex's part of a Salesforce → app change ends.
STAGE_APP_UPDATE_PUBLISHED = "app_update_published"


class Resolver:
    def __init__(
        self,
        store: Store,
        *,
        publish_crm: Publish,
        publish_app: Publish,
        service_name: str,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_output_size: int = 1024 * 1024,
    ) -> None:
        self._store = store
        # A held output must be one the topic will take when it is released (KAFKA_MAX_REQUEST_SIZE).
        self._max_output_size = max_output_size
        self._publish_crm = publish_crm
        self._publish_app = publish_app
        self._service = service_name
        self._metrics = metrics
        self._clock = clock

    async def on_mapped_batch(self, events: Sequence[ChangeMapped]) -> dict[int, InvalidEvent]:
        """Apply ``events`` in order; returns the refused ones by index (see the module doc)."""
        # Refused because an output is over its topic's limit, by index: found by a try rolled back.
        too_large: dict[int, tuple[LogRow, InvalidEvent]] = {}
        async with self._store.session() as session:
            while True:
                admitted = _Admitted()
                try:
                    async with session.transaction() as transaction:
                        # Why a change never overtakes a held one of its record, although this
                        # check and a release deleting the pair's last held changes run at once
                        # (READ COMMITTED: each statement sees what was committed when it began):
                        # - A release deletes a page's rows in the transaction that decides them. So
                        #   when this statement sees no held change for a pair, every change ever
                        #   held for it is decided and committed, and deciding this batch's comes
                        #   after them (their links are ours only once they committed). While it
                        #   still sees rows (deleted, not committed), the batch appends its changes;
                        #   should the release then commit its last page, they are simply the next
                        #   rows, for the next round, behind everything released before.
                        # - A record's changes come through one partition, one batch after another,
                        #   each committed before the next is read: its earlier held changes are
                        #   visible when its next batch looks, and its ids rise in its order. A
                        #   batch of another partition whose appended rows are not committed yet
                        #   may be missed here, but those are other records' changes.
                        # A pause set just after this check is honoured from the next batch.
                        holds = await transaction.holding(_pairs(events))
                        admitted = await self._admit(session, events, holds.inputs, too_large)
                        await transaction.hold_inputs(admitted.held)
                        resolved, published_at = await self._apply(
                            transaction, admitted.items, admitted.logs, holds.outputs
                        )
                    break
                except _OutputTooLarge as error:
                    # Rolled back, nothing of it sent: refuse that change alone and resolve the rest.
                    change = admitted.items[error.item][0]
                    too_large[admitted.positions[error.item]] = self._too_large(change, error)
        if self._metrics is not None:
            count_resolved(self._metrics, resolved, published_at)
        return admitted.refused

    async def release_held(self, tenant_id: str, object_pair: str, page: int) -> int:
        """Decide the changes a pause held for the pair, oldest first and ``page`` per transaction,
        exactly as they would have been decided live; how many were (see :mod:`holding`).

        Each page's claims, decisions, outputs (published and acked, or held for a way still
        paused) and the deletion of its rows commit together: a crash before the commit decides
        the page again, publishing the same outputs with the same ids; after it nothing of the page
        is left to decide. Stops when nothing is left, the pair is paused both ways again, another
        replica is releasing it, or :data:`RELEASE_ROUND` changes were decided: one pair's backlog
        (a weekend's changes) then waits for the next round behind every other pair's and every
        held output, rather than holding them all up until it is drained."""
        released = 0
        async with self._store.session() as session:
            while released < RELEASE_ROUND:
                count = await self._release_page(session, tenant_id, object_pair, page)
                released += count
                if count < page:
                    break
        return released

    async def _release_page(self, session: Session, tenant_id: str, object_pair: str, page: int) -> int:
        """Up to ``page`` of the pair's held changes decided (or refused, or skipped as duplicates)
        and deleted in one transaction; how many."""
        # Held changes refused because an output is over its topic's limit, by row id: dropped with
        # the sync log row a live one gets (there is no dead-letter topic to hand them to from here).
        dropped: dict[int, tuple[LogRow, InvalidEvent]] = {}
        while True:
            admitted, ids = _Admitted(), list[int]()
            try:
                async with session.transaction() as transaction:
                    rows = await transaction.held_inputs(tenant_id, object_pair, page) or []
                    if not rows:
                        return 0
                    ids = [row_id for row_id, _ in rows]
                    events = [ChangeMapped.FromString(message) for _, message in rows]
                    holds = await transaction.holding({(tenant_id, object_pair)})
                    # Not held again (they are the held changes), but decided against the holds of
                    # outputs: a way still paused keeps its outputs, queued behind any held before.
                    skip = {index: dropped[row_id] for index, row_id in enumerate(ids) if row_id in dropped}
                    admitted = await self._admit(session, events, frozenset(), skip, log_invalid=True)
                    resolved, published_at = await self._apply(
                        transaction, admitted.items, admitted.logs, holds.outputs
                    )
                    await transaction.release_inputs(ids)
            except _OutputTooLarge as error:
                change = admitted.items[error.item][0]
                dropped[ids[admitted.positions[error.item]]] = self._too_large(change, error)
                continue
            if self._metrics is not None:
                # An app update's origin → published latency would count the pause: like a held
                # output's, it is left out, so the latency shows how fast Duplex syncs.
                undelayed = [(change, replace(r, app_update=None)) for change, r in resolved]
                count_resolved(self._metrics, undelayed, published_at)
            return len(rows)

    async def _admit(
        self,
        session: Session,
        events: Sequence[ChangeMapped],
        waiting: Collection[PairKey],
        refusals: Mapping[int, tuple[LogRow, InvalidEvent]],
        *,
        log_invalid: bool = False,
    ) -> _Admitted:
        """Sort ``events`` out: to decide, to hold (their pair is in ``waiting``) or refused (those
        in ``refusals`` as said there), with the sync log rows of the refused (of events that break
        the contract too with ``log_invalid``: the dead-letter topic tells of them otherwise).

        A change to hold is checked as one to decide is, but for its values: converting them is
        most of what a paused change would cost here, and they are converted and checked when it is
        decided. So an invalid value of a held change is refused on release (in the sync log), not
        dead-lettered on arrival; any other fault is refused on arrival either way."""
        admitted = _Admitted()
        for index, event in enumerate(events):
            refusal = refusals.get(index)
            if refusal is not None:
                admitted.logs.append(refusal[0])
                admitted.refused[index] = refusal[1]
                continue
            held = (event.tenant_id, event.object_pair) in waiting
            change: MappedChange | None = None
            try:
                if held:
                    checked_shape(event)
                else:
                    change = mapped_from_proto(event)
            except InvalidEvent as error:
                admitted.refused[index] = error
                if log_invalid:
                    admitted.logs.append(
                        self._row(event.tenant_id, "change.rejected", event.link_id or None, message=error.reason)
                    )
                continue
            unfit = _unfit_ids(event) if change is None else _unfit_change(change)
            stored = None if unfit else await session.mapping(event.tenant_id, event.mapping_version)
            pair = stored.config.object_pair(event.object_pair) if stored is not None else None
            if stored is None or pair is None:
                code, reason = unfit or (
                    "UNKNOWN_PAIR",
                    f"no object pair {event.object_pair!r} in mapping version {event.mapping_version}",
                )
                admitted.logs.append(
                    self._row(event.tenant_id, "change.rejected", event.link_id, code=code, message=reason)
                )
                admitted.refused[index] = InvalidEvent(reason)
            elif change is None:
                admitted.held.append(((event.tenant_id, event.object_pair), event.event_id, event.SerializeToString()))
            else:
                admitted.items.append((change, pair, stored.config.spec.salesforce.call_options_client, event))
                admitted.positions.append(index)
        return admitted

    def _too_large(self, change: MappedChange, too_large: _OutputTooLarge) -> tuple[LogRow, InvalidEvent]:
        """The sync log row and the refusal of a change whose output is over the topic's limit."""
        reason = f"{RECORD_TOO_LARGE}: {too_large.output} for this change is {too_large.reason}"
        row = self._row(change.tenant_id, "change.rejected", change.link_id, code=RECORD_TOO_LARGE, message=reason)
        return row, InvalidEvent(reason)

    async def _apply(
        self, repo: Transaction, items: Sequence[_Item], logs: list[LogRow], holding: Collection[HoldKey]
    ) -> tuple[list[tuple[MappedChange, Resolution]], datetime]:
        """Resolve ``items`` in order inside the caller's transaction, publish their outputs (acked)
        but those of the ``holding`` pairs and ways, which are held.

        Returns the resolutions and the moment every output was acknowledged.
        """
        claimed = await repo.claim([(item[0].tenant_id, item[0].event_id) for item in items])
        fresh: list[tuple[int, _Item]] = []
        for position, item in enumerate(items):
            change = item[0]
            if (change.tenant_id, change.event_id) in claimed:
                claimed.discard((change.tenant_id, change.event_id))  # a second copy in the batch is a duplicate
                fresh.append((position, item))
            else:
                log.debug("duplicate event", extra={"tenant": change.tenant_id, "event": change.event_id})
        initial: dict[LinkKey, LinkState] = {}
        for _, (change, *_) in fresh:
            initial.setdefault(
                (change.tenant_id, change.link_id),
                LinkState(change.link_id, change.object_pair, change.external_id or f"dx-{change.link_id}"),
            )
        links = await repo.lock_or_create_links(initial)
        fields = await repo.fields(list(initial))
        held: list[HeldOutput] = []
        echoes: Counter[tuple[str, str, str, str]] = Counter()
        changed_fields: dict[FieldKey, FieldRecord] = {}
        sent: list[SentWrite] = []
        crm_writes: list[tuple[Message, bytes]] = []
        app_updates: list[tuple[Message, bytes]] = []
        # The item each output comes from, to refuse it alone when its output is too large.
        crm_origins: list[int] = []
        app_origins: list[int] = []
        resolved: list[tuple[MappedChange, Resolution]] = []
        ways = {
            Way.TO_CRM: (crm_writes, crm_origins, "the Salesforce write"),
            Way.TO_APP: (app_updates, app_origins, "the app update"),
        }

        def route(change: MappedChange, way: Way, output: tuple[Message, bytes], position: int) -> bool:
            """Send ``output`` its way, or into its pair's hold; whether it was held."""
            outputs, origins, what = ways[way]
            hold = (change.tenant_id, change.object_pair, way)
            if hold in holding:
                held.append(self._held(hold, output, position, what))
                return True
            outputs.append(output)
            origins.append(position)
            return False

        for position, (change, pair, client_id, _) in fresh:
            key = (change.tenant_id, change.link_id)
            resolution = resolve(pair, client_id, links[key], fields[key], change)
            held_ways: set[Way] = set()
            if resolution.crm_write is not None:
                command = write_records(change, pair, resolution.link, resolution.crm_write)
                if route(change, Way.TO_CRM, (command, link_key(change.tenant_id, change.link_id)), position):
                    held_ways.add(Way.TO_CRM)
                write = resolution.crm_write
                sent.append((change.tenant_id, change.link_id, write.version, str(write.operation), write.pending))
            if resolution.app_update is not None:
                update = app_update(change, pair, client_id, resolution.app_update)
                record = resolution.app_update.record_id or change.link_id
                if route(change, Way.TO_APP, (update, record_key(change.tenant_id, pair.app.object, record)), position):
                    held_ways.add(Way.TO_APP)
            # The next change of this link starts from what this one left.
            links[key] = resolution.link
            fields[key].update(resolution.fields)
            for name, field_record in resolution.fields.items():
                changed_fields[(change.tenant_id, change.link_id, name)] = field_record
            if _only_echo(resolution):
                echoes[(change.tenant_id, change.object_pair, str(change.side), str(resolution.echo))] += 1
            logs.extend(self._records(change, resolution, held_ways))
            # A held app update is not published yet: no latency to count for it.
            resolved.append((change, replace(resolution, app_update=None) if Way.TO_APP in held_ways else resolution))
        await repo.save(links, changed_fields)
        await repo.record_sent(sent)
        await repo.hold(held)
        await repo.log(logs + self._echoes(echoes))
        # Both topics' records queued before waiting for any ack; all acked before the commit.
        await asyncio.gather(
            _published(self._publish_crm, crm_writes, crm_origins, "the Salesforce write"),
            _published(self._publish_app, app_updates, app_origins, "the app update"),
        )
        return resolved, self._clock()

    async def on_settled_batch(self, events: Sequence[WriteSettled]) -> dict[int, InvalidEvent]:
        """Apply write outcomes in order, in one transaction; returns the refused ones by index."""
        refused: dict[int, InvalidEvent] = {}
        outcomes: list[WriteOutcome] = []
        logs: list[LogRow] = []
        for index, event in enumerate(events):
            try:
                outcome = outcome_from_proto(event)
            except InvalidEvent as error:
                refused[index] = error
                continue
            reason = _unstorable(
                "WriteSettled",
                tenant_id=outcome.tenant_id,
                link_id=outcome.link_id,
                command_id=outcome.command_id,
                record_id=outcome.record_id,
            )
            if reason is None:
                outcomes.append(outcome)
            else:
                logs.append(
                    self._row(outcome.tenant_id, "outcome.rejected", outcome.link_id, code=UNSTORABLE, message=reason)
                )
                refused[index] = InvalidEvent(reason)
        if outcomes or logs:
            async with self._store.session() as session, session.transaction() as transaction:
                await transaction.log(logs)
                # All of the batch's links locked up front, in the order every batch uses.
                await transaction.lock_links([(o.tenant_id, o.link_id) for o in outcomes])
                for outcome in outcomes:
                    await self._settle(transaction, outcome)
        return refused

    async def _settle(self, transaction: Transaction, outcome: WriteOutcome) -> None:
        repo = transaction.tenant(outcome.tenant_id)
        if not await repo.claim(f"outcome:{outcome.command_id}:{outcome.link_id}:{outcome.version}"):
            return
        link = await repo.lock_link(outcome.link_id)
        if link is None:
            await transaction.log(
                [self._row(outcome.tenant_id, "outcome.ignored", outcome.link_id, message="unknown link")]
            )
            return
        if outcome.status is WriteStatus.REJECTED:
            await self._rejected(transaction, repo, link, outcome)
        elif outcome.status is WriteStatus.SUCCEEDED:
            await self._succeeded(transaction, repo, link, outcome)

    async def _succeeded(
        self, transaction: Transaction, repo: TenantLinks, link: LinkState, outcome: WriteOutcome
    ) -> None:
        # Success confirms nothing about field values (policy.roll_back explains why); it only
        # tells us the id of a record Duplex created.
        if outcome.operation is Operation.DELETE or not outcome.record_id:
            return
        new_id = outcome.record_id != link.crm_record_id and (outcome.created or link.crm_record_id is None)
        if new_id:
            await repo.save(replace(link, crm_record_id=outcome.record_id), {})
            await repo.store_crm_id(link, outcome.record_id)
        # Salesforce's echo of the create may have linked the id first; the record was still created
        # by this write, and its timeline says so (each outcome is handled once).
        if new_id or outcome.created:
            await transaction.log(
                [self._row(outcome.tenant_id, "record.created", link.link_id, record_id=outcome.record_id)]
            )

    async def _rejected(
        self, transaction: Transaction, repo: TenantLinks, link: LinkState, outcome: WriteOutcome
    ) -> None:
        sent = await repo.sent(link.link_id, outcome.version)
        first = outcome.errors[0] if outcome.errors else None
        settled = {}
        if sent is not None:
            operation, pending = sent
            settled = settle_rejected(await repo.fields(link.link_id), pending)
            if operation == "delete":
                link = replace(link, crm_deleted=False)
        await repo.save(link, settled)
        row = self._row(
            outcome.tenant_id,
            "write.rejected",
            link.link_id,
            record_id=outcome.record_id or link.crm_record_id,
            code=first.code if first else "REJECTED",
            message=first.message if first else "rejected without an error",
            detail={
                "version": outcome.version,
                "rolled_back": sorted(settled),
                "errors": [{"code": e.code, "message": e.message, "fields": list(e.fields)} for e in outcome.errors],
            },
        )
        await transaction.log([row])

    def _held(self, hold: HoldKey, output: tuple[Message, bytes], position: int, what: str) -> HeldOutput:
        """``output`` encoded for its hold; refused like a published one when no topic would take it."""
        message, key = output
        encoded = message.SerializeToString()
        reason = oversize(encoded, key, self._max_output_size)
        if reason is not None:
            raise _OutputTooLarge(position, what, reason)
        return hold, key, encoded

    def _records(self, change: MappedChange, resolution: Resolution, held: set[Way]) -> list[LogRow]:
        """One sync log row per change, one more per conflict: 'why did this field flip?'.

        An echo, Duplex's own write coming back, that leads to nothing is only counted
        (:meth:`_echoes`): about as many come as Duplex writes, and a row each made up a third of
        the log while saying nothing about any record's values. A write or update held by a pause
        says so (``"held": true``)."""
        if _only_echo(resolution):
            return self._conflicts(change, resolution)
        writes: dict[str, Any] = {}
        if resolution.crm_write is not None:
            writes["crm"] = {
                "operation": str(resolution.crm_write.operation),
                "fields": sorted(resolution.crm_write.fields),
            } | ({"held": True} if Way.TO_CRM in held else {})
        if resolution.app_update is not None:
            writes["app"] = {
                "kind": str(resolution.app_update.kind),
                "fields": sorted(resolution.app_update.fields),
            } | ({"held": True} if Way.TO_APP in held else {})
        # Origin commit → decided, for an update the app gets now: the health's lag towards the app.
        lag = (
            {"lag_ms": max(0, int((self._clock() - change.at).total_seconds() * 1000))}
            if "app" in writes and Way.TO_APP not in held
            else {}
        )
        detail = {
            "source_event_id": change.source_event_id,
            "side": str(change.side),
            "kind": str(change.kind),
            **({"echo": str(resolution.echo)} if resolution.echo else {}),
            "fields": {
                d.field: {"outcome": str(d.outcome), "reason": d.reason, **({"echo": str(d.echo)} if d.echo else {})}
                for d in resolution.decisions
            },
            "notes": list(resolution.notes),
            "writes": writes,
            "dropped": dict(change.dropped),
            **lag,
        }
        row = self._row(change.tenant_id, "change.resolved", change.link_id, detail=detail)
        return [row, *self._conflicts(change, resolution)]

    def _conflicts(self, change: MappedChange, resolution: Resolution) -> list[LogRow]:
        return [
            self._row(
                change.tenant_id,
                "conflict.decided",
                change.link_id,
                code=d.policy,
                message=f"{d.field}: {d.winner} wins ({d.reason})",
                detail={"field": d.field, "winner": str(d.winner), "outcome": str(d.outcome)},
            )
            for d in resolution.decisions
            if d.conflict
        ]

    def _echoes(self, echoes: Counter[tuple[str, str, str, str]]) -> list[LogRow]:
        """One row per tenant, pair, side and kind of echo in a batch, with how many were dropped."""
        return [
            self._row(
                tenant,
                "echoes.dropped",
                None,
                message=f"{count} of Duplex's own writes to {side} came back for {pair} and were dropped ({echo})",
                detail={"count": count, "object_pair": pair, "side": side, "echo": echo},
            )
            for (tenant, pair, side, echo), count in sorted(echoes.items())
        ]

    def _row(
        self,
        tenant_id: str,
        event: str,
        link_id: str | None,
        *,
        record_id: str | None = None,
        code: str | None = None,
        message: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> LogRow:
        """A sync log row; ``detail`` is stored as JSON. Texts from events are made storable."""
        details = storable_json_text(detail or {})
        texts = (link_id, record_id, code, message)
        link, record, code, message = (None if t is None else storable_text(t) for t in texts)
        return (storable_text(tenant_id), self._service, event, link, record, code, message, details)


@dataclass
class _Admitted:
    """A batch's events sorted out (:meth:`Resolver._admit`)."""

    # The changes to decide, and each one's index in the batch.
    items: list[_Item] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    # The changes to hold undecided, in the batch's order.
    held: list[HeldInput] = field(default_factory=list)
    refused: dict[int, InvalidEvent] = field(default_factory=dict)
    # The sync log rows of the refused.
    logs: list[LogRow] = field(default_factory=list)


def _pairs(events: Sequence[ChangeMapped]) -> set[PairKey]:
    """The (tenant, object pair)s of ``events`` that PostgreSQL can look up; the others' events are
    refused (UNSTORABLE_TEXT) without being held."""
    return {(e.tenant_id, e.object_pair) for e in events if not (unstorable(e.tenant_id) or unstorable(e.object_pair))}


def _only_echo(resolution: Resolution) -> bool:
    """Duplex's own write come back, leading to no write and no update."""
    return resolution.echo is not None and resolution.crm_write is None and resolution.app_update is None


class _OutputTooLarge(Exception):  # noqa: N818 (carries a refusal out of a transaction, rolling it back)
    def __init__(self, item: int, output: str, reason: str) -> None:
        super().__init__(reason)
        self.item = item
        self.output = output
        self.reason = reason


async def _published(publish: Publish, outputs: list[tuple[Message, bytes]], origins: list[int], what: str) -> None:
    """``publish(outputs)``; an output over Kafka's record limit names the item it came from."""
    try:
        await publish(outputs)
    except RecordTooLargeError as error:
        raise _OutputTooLarge(origins[error.index], what, error.reason) from error


# The sync log code of a change whose output cannot be a Kafka record (as mapping's).
RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
# The sync log code of an event refused because PostgreSQL cannot store one of its identifiers.
UNSTORABLE = "UNSTORABLE_TEXT"
# ... or because one of its values cannot even be compared.
INCOMPARABLE = "INCOMPARABLE_VALUE"


def _unstorable(message: str, **ids: str) -> str | None:
    """Why an event (a ``message``) whose identifiers (``ids``) PostgreSQL cannot store is refused.

    Identifiers key the resolver's rows, so they are stored as they are, never escaped (see
    :mod:`state_codec`); such an event is refused alone instead of failing its batch.
    """
    names = [name for name, text in ids.items() if unstorable(text)]
    if not names:
        return None
    return f"{message} with U+0000 or a surrogate in {', '.join(names)}, which PostgreSQL cannot store"


def _unfit_ids(change: MappedChange | ChangeMapped) -> tuple[str, str] | None:
    """(code, reason) for a mapped change (or the event it comes as) whose identifiers PostgreSQL
    cannot store: held or decided, it would fail its batch."""
    reason = _unstorable(
        "ChangeMapped",
        tenant_id=change.tenant_id,
        event_id=change.event_id,
        link_id=change.link_id,
        object_pair=change.object_pair,
        app_record_id=change.app_record_id,
        crm_record_id=change.crm_record_id,
        external_id=change.external_id,
    )
    return None if reason is None else (UNSTORABLE, reason)


def _unfit_change(change: MappedChange) -> tuple[str, str] | None:
    """(code, reason) for a mapped change the resolver cannot apply without failing its batch."""
    unfit = _unfit_ids(change)
    if unfit is not None:
        return unfit
    # Comparing a signaling NaN raises, which would fail the batch again on every redelivery.
    signaling = sorted(
        f.app_field
        for f in change.fields
        if any(isinstance(v, Decimal) and v.is_snan() for v in (f.app_value, f.crm_value))
    )
    if signaling:
        return INCOMPARABLE, f"ChangeMapped with a signaling NaN in {', '.join(signaling)}, which cannot be compared"
    return None


def count_resolved(
    metrics: Metrics, resolved: Sequence[tuple[MappedChange, Resolution]], published_at: datetime
) -> None:
    """The metrics of a committed batch whose outputs were all published (acked) at ``published_at``."""
    for change, resolution in resolved:
        if resolution.echo is not None:
            metrics.echoes_dropped.labels(change.tenant_id, str(change.side), str(resolution.echo)).inc()
        for d in resolution.decisions:
            if d.conflict:
                metrics.conflicts_decided.labels(change.tenant_id, d.policy, str(d.winner)).inc()
        if resolution.app_update is not None:
            latency = max(0.0, (published_at - change.at).total_seconds())
            metrics.end_to_end_latency.labels(tenant=change.tenant_id, stage=STAGE_APP_UPDATE_PUBLISHED).observe(
                latency
            )

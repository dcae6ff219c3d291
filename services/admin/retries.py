"""Retrying the records Salesforce rejected, once the cause is fixed in the mapping.

A write Salesforce refused because the mapping did not carry a field it requires (a Contact created
from the app without the LastName no rule mapped: REQUIRED_FIELD_MISSING) cannot be replayed: Duplex
keeps the values of mapped fields only, so the dead-lettered write is as incomplete as it was. So
Duplex asks the app to publish the record's current state again: a *resend request*
(``CHANGE_KIND_RESEND`` on app-updates, see docs/app-contract.md). The app answers with a snapshot on
app-changes, which the tenant's current mapping maps. The field of the new rule is a value the
conflict-resolver has not seen yet, so it is written; the fields it knew stay as they were (a
snapshot's known values are no news), and a record not created in Salesforce yet is created with
every field, as every upsert is. So for a record Salesforce has already, a retry writes the newly
mapped fields only: values the rejected update carried are known, and not sent again.

Which records: those whose latest write to Salesforce is still a rejection. The conflict-resolver
logs each write Salesforce rejected (``write.rejected``) with its link and the write's version (it
numbers each link's writes); the writer raises a link's applied version with every write that
succeeded (``writer_applied_versions``). A link whose applied version passed its latest rejected one
had a write succeed since (a later edit, a replay): it is not retried. Rejections older than the sync
log's retention are forgotten.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.admin.contract import resend_request
from services.admin.sync_log_search import links_of
from services.common.codec import record_key
from services.common.db import Connection
from services.common.sync_log import Entry, SyncLog
from services.common.tenant_config import ObjectPair

# The sync-log event of a resend request: a record's timeline shows that a retry was asked for.
RESEND_REQUESTED: Final = "record.resend_requested"
_SYNC_LOG = SyncLog("admin-api")


@dataclass(frozen=True)
class Rejection:
    """A link's latest write that Salesforce rejected, and the highest version the writer applied."""

    link_id: str
    pair: str
    app_record_id: str | None
    crm_record_id: str | None
    version: int
    at: datetime
    code: str | None = None
    message: str | None = None
    applied_version: int | None = None
    # Set when a Salesforce merge made another record's link the survivor: this one is no longer synced.
    merged_into: str | None = None

    @property
    def still_rejected(self) -> bool:
        """No write of the link succeeded after this one: its latest outcome is this rejection."""
        return self.applied_version is None or self.version > self.applied_version


@dataclass(frozen=True)
class Skipped:
    rejection: Rejection
    reason: str


@dataclass(frozen=True)
class Selection:
    """The records to ask the app for, oldest rejection first, and those that cannot be, with why."""

    resend: tuple[Rejection, ...]
    skipped: tuple[Skipped, ...]


def skip_reason(rejection: Rejection, pairs: Mapping[str, ObjectPair]) -> str | None:
    """Why the app cannot be asked for this record, or None when it can."""
    if rejection.pair not in pairs:
        return f"its object pair {rejection.pair!r} is no longer in the tenant's configuration"
    if rejection.merged_into is not None:
        return f"merged into the record of link {rejection.merged_into} in Salesforce: no longer synced"
    if not rejection.app_record_id:
        # A Salesforce record whose create in the app has not come back: the app has nothing to send.
        return "the app has no record of it yet, so it has nothing to resend; fix it in Salesforce"
    return None


def select(rejections: Iterable[Rejection], pairs: Mapping[str, ObjectPair]) -> Selection:
    """Of each link's latest rejection, the records to ask the app for and those to skip.

    Links with a write that succeeded since are neither. An app record is asked for once, however
    many of its links (one per pair sharing its object) were rejected: one snapshot serves them all.
    """
    resend: list[Rejection] = []
    skipped: list[Skipped] = []
    asked: set[tuple[str, str]] = set()
    for rejection in sorted((r for r in rejections if r.still_rejected), key=lambda r: (r.at, r.link_id)):
        reason = skip_reason(rejection, pairs)
        if reason is not None:
            skipped.append(Skipped(rejection, reason))
            continue
        record = (pairs[rejection.pair].app.object, rejection.app_record_id or "")
        if record not in asked:
            asked.add(record)
            resend.append(rejection)
    return Selection(tuple(resend), tuple(skipped))


def nothing_to_retry(tenant_id: str, record: str, rejections: Sequence[Rejection], since: datetime | None) -> str:
    """Why a record a request names has nothing to retry (its latest rejections, any outcome since)."""
    if not rejections:
        when = f" since {since.isoformat()}" if since is not None else ""
        return f"tenant '{tenant_id}' has no write of record '{record}' that Salesforce rejected{when}"
    return f"record '{record}' has nothing to retry: its latest write to Salesforce succeeded"


@dataclass(frozen=True)
class ResendRequest:
    """One resend request: its event id (the app applies each once), record and why it is sent."""

    event_id: str
    app_object: str
    rejection: Rejection

    @property
    def record_id(self) -> str:
        return self.rejection.app_record_id or ""


def resend_requests(
    selected: Iterable[Rejection],
    pairs: Mapping[str, ObjectPair],
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> list[ResendRequest]:
    """A request per selected record. Each has a new event id: the app remembers the ids it applied,
    and a retry asked for again (after another fix) must be answered again."""
    return [ResendRequest(new_id(), pairs[r.pair].app.object, r) for r in selected]


def messages(tenant_id: str, requests: Iterable[ResendRequest], at: datetime) -> list[tuple[bytes, bytes]]:
    """Each request as the app-updates record (key, value) it is sent as, keyed like every app-update."""
    return [
        (
            record_key(tenant_id, r.app_object, r.record_id),
            resend_request(
                event_id=r.event_id,
                tenant_id=tenant_id,
                app_object=r.app_object,
                record_id=r.record_id,
                link_id=r.rejection.link_id,
                at=at,
            ),
        )
        for r in requests
    ]


async def rejections_of(
    db: Connection, tenant_id: str, *, record: str | None, pair: str | None, since: datetime | None
) -> list[Rejection]:
    """The latest rejection of each link a retry names: ``record``'s (by any of its ids), ``pair``'s,
    rejected at or after ``since``; every one of the tenant's for what is None."""
    links = None if record is None else [link.link_id for link in await links_of(db, tenant_id, record)]
    if links == []:
        return []
    return await latest_rejections(db, tenant_id, links=links, pair=pair, since=since)


async def latest_rejections(
    db: Connection,
    tenant_id: str,
    *,
    links: Sequence[str] | None = None,
    pair: str | None = None,
    since: datetime | None = None,
) -> list[Rejection]:
    """Each link's latest rejected write (of ``links``, of ``pair``, rejected at or after ``since``)."""
    args: list[Any] = [tenant_id]
    clauses = []
    for clause, value in (("s.link_id = ANY({}::text[])", links), ("l.object_pair = {}", pair), ("s.at >= {}", since)):
        if value is not None:
            args.append(value)
            clauses.append(" AND " + clause.format(f"${len(args)}"))
    # Only the conflict-resolver's row of a rejection carries the write's version (the writer logs
    # the same rejection without it).
    rows = await db.fetch(
        "SELECT DISTINCT ON (s.link_id) s.link_id, s.at, s.code, s.message,"
        " (s.detail->>'version')::bigint AS version, l.object_pair, l.app_record_id, l.crm_record_id,"
        " l.merged_into, a.version AS applied_version"
        " FROM sync_log s JOIN links l ON l.tenant_id = s.tenant_id AND l.link_id = s.link_id"
        " LEFT JOIN writer_applied_versions a ON a.tenant_id = s.tenant_id AND a.link_id = s.link_id"
        " WHERE s.tenant_id = $1 AND s.event = 'write.rejected' AND jsonb_typeof(s.detail->'version') = 'number'"
        + "".join(clauses)
        + " ORDER BY s.link_id, version DESC, s.at DESC",
        *args,
    )
    return [
        Rejection(
            link_id=r["link_id"],
            pair=r["object_pair"],
            app_record_id=r["app_record_id"],
            crm_record_id=r["crm_record_id"],
            version=r["version"],
            at=r["at"],
            code=r["code"],
            message=r["message"],
            applied_version=r["applied_version"],
            merged_into=r["merged_into"],
        )
        for r in rows
    ]


async def log_requests(db: Connection, tenant_id: str, requests: Sequence[ResendRequest], actor: str) -> None:
    """One sync-log row per request, on the record's link: its timeline shows the retry."""
    for request in requests:
        rejection = request.rejection
        await _SYNC_LOG.record(
            db,
            Entry(
                tenant_id=tenant_id,
                event=RESEND_REQUESTED,
                link_id=rejection.link_id,
                record_id=request.record_id,
                message=f"the app was asked to publish the record again, to retry the write Salesforce rejected"
                f" ({rejection.code or 'no code'})",
                detail={
                    "event_id": request.event_id,
                    "pair": rejection.pair,
                    "app_object": request.app_object,
                    "rejected": {"version": rejection.version, "code": rejection.code, "at": rejection.at.isoformat()},
                    "actor": actor,
                },
            ),
        )

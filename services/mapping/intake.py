"""Checks of the fields a producer sets and everything downstream would otherwise trust. Pure.

Several producers share ``app-changes`` (one per internal service, for many tenants), and what
one of them writes decides for the others' data: the tenant it names, the time newest-wins
conflicts compare, the echo tag that makes the conflict-resolver drop a change as Duplex's own.
So mapping checks them as changes come in:

* **Tenant** (both topics): the payload's ``tenant_id`` must be the tenant of the record key
  (``tenant/object/record``), else the change is refused (dead-lettered, in the sync log).
* **Side** (both topics): ``app-changes`` carries app-side changes only and ``crm-changes``
  Salesforce ones only, else the change is refused. Otherwise an app producer could publish a
  "Salesforce" change, with a "Salesforce" echo tag, through ``app-changes``.
* **Commit time** (both topics): an ``origin_commit_time`` more than the configured skew in the
  future is clamped to now (counted, and in the sync log); otherwise it would win every
  newest-wins conflict on its fields for ever.
* **Echo tag** (app side): the only tag that means anything downstream is the tenant's
  ``call_options_client``, which an app copies from an app-update into the change it made by
  applying it (``docs/app-contract.md``). Duplex only ever sends app-updates for records it
  linked, or asks for a record to be created with its external id, so a change so tagged of an
  app record with no link and no external id cannot be an echo: its tag is removed (counted,
  and in the sync log), and the change syncs as the real edit it is. No configuration says
  which other client ids an app may use, so other tags pass unchanged: nothing downstream acts
  on them. Salesforce-side tags come from the CDC header, read by cdc-ingest; the side check
  above keeps them on ``crm-changes``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.common.change import Change, Side
from services.common.codec import tenant_of_key

COMMIT_TIME = "origin_commit_time"
ORIGIN_CLIENT = "origin_client"


@dataclass(frozen=True)
class Correction:
    """A producer field mapping changed, and why (for the metric and the sync log)."""

    field: str
    message: str


def refusal(change: Change, key: bytes | None, side: Side | None) -> str | None:
    """Why ``change``, read under ``key`` from the topic of ``side``, must be refused, if it must."""
    key_tenant = tenant_of_key(key)
    if key_tenant != change.tenant_id:
        return f"payload tenant {change.tenant_id!r} does not match key tenant {key_tenant!r}"
    if side is not None and change.side is not side:
        return f"a {change.side} change on the topic of {side} changes"
    return None


def clamp_commit_time(change: Change, now: datetime, max_skew: timedelta) -> tuple[Change, Correction | None]:
    """``change`` with a commit time more than ``max_skew`` ahead of ``now`` set to ``now``."""
    if change.at - now <= max_skew:
        return change, None
    correction = Correction(
        COMMIT_TIME, f"origin_commit_time {change.at.isoformat()} is in the future; clamped to {now.isoformat()}"
    )
    return replace(change, at=now), correction


def claims_echo(change: Change, client_id: str) -> bool:
    """Whether ``change`` carries the tag the conflict-resolver drops as Duplex's own write."""
    return bool(client_id) and change.origin_client == client_id


def untagged(change: Change) -> tuple[Change, Correction]:
    """``change`` without the echo tag it could not have earned (see the module doc)."""
    correction = Correction(
        ORIGIN_CLIENT,
        f"origin_client {change.origin_client!r} removed: Duplex sent no update for this {change.side} record",
    )
    return replace(change, origin_client=""), correction

"""Backfills as the control plane sees them (``backfills`` in ``deploy/sql/0004_cdc_ingest.sql``): how
far each object's latest has come. Asking for one is a job (:mod:`services.common.jobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

Status = Literal["requested", "running", "done"]


class Reader(Protocol):
    async def fetch(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Progress:
    """One object's latest backfill. ``emitted``: records published so far; ``estimated``: the
    object's record count when cdc-ingest began reading (None while only requested)."""

    object: str
    running: bool
    method: str
    emitted: int
    estimated: int | None
    started_at: datetime
    updated_at: datetime

    @property
    def status(self) -> Status:
        if not self.running:
            return "done"
        return "requested" if self.estimated is None and self.emitted == 0 else "running"

    @property
    def fraction(self) -> float | None:
        """Done of estimated (1 once done; records created meanwhile can take it past 1 while running)."""
        if self.status == "done":
            return 1.0
        return self.emitted / self.estimated if self.estimated else None

    @property
    def per_second(self) -> float | None:
        """Records published per second so far (until the last progress saved)."""
        elapsed = (self.updated_at - self.started_at).total_seconds()
        return self.emitted / elapsed if self.emitted and elapsed > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far, the time to publish the rest of the estimate; None when unknown."""
        rate = self.per_second
        if self.status != "running" or self.estimated is None or rate is None:
            return None
        return max(0, self.estimated - self.emitted) / rate


async def backfills_of(db: Reader, tenant_id: str) -> list[Progress]:
    """Each object's latest backfill for the tenant, by object. One asked for (a backfill job
    waiting, or claimed but not begun over an older run) shows as requested."""
    rows = await db.fetch(
        "SELECT b.object, b.status, b.method, b.emitted, b.estimated, b.started_at, b.updated_at, a.created_at AS asked"
        " FROM backfills b LEFT JOIN jobs a ON a.tenant_id = b.tenant_id AND a.kind = 'backfill'"
        " AND a.object = b.object AND a.status IN ('requested', 'running') AND a.created_at > b.started_at"
        " WHERE b.tenant_id = $1"
        " UNION ALL SELECT j.object, 'running', 'rest', 0, NULL, j.created_at, j.created_at, j.created_at FROM jobs j"
        " WHERE j.tenant_id = $1 AND j.kind = 'backfill' AND j.status IN ('requested', 'running')"
        " AND NOT EXISTS (SELECT 1 FROM backfills b WHERE b.tenant_id = j.tenant_id AND b.object = j.object)"
        " ORDER BY 1",
        tenant_id,
    )
    return [
        Progress(
            object=r["object"],
            running=r["asked"] is not None or r["status"] == "running",
            method=r["method"],
            emitted=0 if r["asked"] is not None else r["emitted"],
            estimated=None if r["asked"] is not None else r["estimated"],
            started_at=r["asked"] or r["started_at"],
            updated_at=r["asked"] or r["updated_at"],
        )
        for r in rows
    ]

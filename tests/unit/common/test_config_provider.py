"""One tenant-configuration provider for every service: bounded staleness, versions cached."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config_provider import TenantConfigs
from services.common.tenant_config import TenantNotFoundError

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml"
DOCUMENT = yaml.safe_load(SAMPLE.read_text())
TENANT = DOCUMENT["metadata"]["name"]


class Versions:
    """config_versions in memory, counting the queries that reach it."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.version_checks = 0
        self.document_reads = 0

    def apply(self, version: int) -> None:
        self.rows[version] = {
            "tenant_id": TENANT,
            "version": version,
            "sha256": f"sha-{version}",
            "applied_at": datetime(2026, 12, 6, tzinfo=UTC),
            "applied_by": "test",
            "document": DOCUMENT,
        }

    async def fetchval(self, query: str, *args: Any) -> Any:
        assert "max(version)" in query
        self.version_checks += 1
        return max(self.rows, default=None) if args[0] == TENANT else None

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.document_reads += 1
        tenant_id, version = args
        if tenant_id != TENANT or not self.rows:
            return None
        return self.rows.get(max(self.rows) if version is None else version)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_current_is_reread_only_after_the_staleness_window_and_parsed_only_when_it_moved() -> None:
    db, clock = Versions(), Clock()
    db.apply(1)
    configs = TenantConfigs(5.0, clock=clock)

    first = await configs.current(db, TENANT)
    clock.now = 4.9
    assert await configs.current(db, TENANT) is first
    assert (db.version_checks, db.document_reads) == (1, 1)

    clock.now = 5.0  # stale: the version is checked, the document not read again
    assert await configs.current(db, TENANT) is first
    assert (db.version_checks, db.document_reads) == (2, 1)

    db.apply(2)
    clock.now = 10.0
    second = await configs.current(db, TENANT)
    assert second is not None
    assert second.version == 2
    assert (db.version_checks, db.document_reads) == (3, 2)


async def test_zero_staleness_sees_every_new_version_at_once() -> None:
    db = Versions()
    db.apply(1)
    configs = TenantConfigs(0.0)
    assert (await configs.require_current(db, TENANT)).version == 1
    db.apply(2)
    assert (await configs.require_current(db, TENANT)).version == 2


async def test_a_tenant_without_configuration() -> None:
    configs = TenantConfigs(5.0)
    assert await configs.current(Versions(), "nobody") is None
    with pytest.raises(TenantNotFoundError):
        await configs.require_current(Versions(), "nobody")
    assert await configs.at_version(Versions(), "nobody", 1) is None


async def test_versions_are_read_once_and_the_least_recently_used_is_dropped() -> None:
    db = Versions()
    for version in (1, 2, 3):
        db.apply(version)
    configs = TenantConfigs(5.0, versions=2)
    for version in (1, 2, 1, 3):  # 2 is the least recently used when 3 arrives
        stored = await configs.at_version(db, TENANT, version)
        assert stored is not None
        assert stored.version == version
    assert db.document_reads == 3
    await configs.at_version(db, TENANT, 1)
    assert db.document_reads == 3
    await configs.at_version(db, TENANT, 2)
    assert db.document_reads == 4

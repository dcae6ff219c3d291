"""A tenant's org client follows its configuration, and is kept while the Salesforce settings are the same."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.common.config_provider import TenantConfigs
from services.common.salesforce import UnlimitedBudget, env_secrets
from services.common.tenant_config import TenantNotFoundError
from services.writer.batching import Ingestion
from services.writer.orgs import Orgs

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml"
DOCUMENT: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
TENANT = DOCUMENT["metadata"]["name"]


class Versions:
    """config_versions in memory."""

    def __init__(self) -> None:
        self.documents: dict[int, dict[str, Any]] = {}

    def apply(self, document: dict[str, Any]) -> None:
        self.documents[len(self.documents) + 1] = document

    async def fetchval(self, query: str, *args: Any) -> Any:
        return max(self.documents, default=None) if args[0] == TENANT else None

    async def fetchrow(self, query: str, *args: Any) -> Any:
        tenant_id, version = args
        if tenant_id != TENANT or version not in self.documents:
            return None
        return {
            "tenant_id": TENANT,
            "version": version,
            "sha256": f"sha-{version}",
            "applied_at": datetime(2026, 5, 1, tzinfo=UTC),
            "applied_by": "test",
            "document": self.documents[version],
        }


def changed(**spec: Any) -> dict[str, Any]:
    """The sample document with parts of its spec replaced."""
    document = copy.deepcopy(DOCUMENT)
    for section, values in spec.items():
        document["spec"][section] |= values
    return document


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def orgs(db: Versions, http: httpx.AsyncClient) -> Orgs:
    # No staleness allowed: every call looks at the newest version.
    return Orgs(TenantConfigs(0.0), db, secrets=env_secrets({}), budget=UnlimitedBudget(), http=http)


async def test_the_client_is_kept_until_the_salesforce_settings_change(http: httpx.AsyncClient) -> None:
    db = Versions()
    db.apply(DOCUMENT)
    tenants = orgs(db, http)

    first = await tenants.resources(TENANT)
    assert first.ingestion is Ingestion.AUTOMATIC
    assert await tenants.resources(TENANT) is first

    db.apply(changed(sync={"backfill": {"ingestion": "bulk"}}))
    second = await tenants.resources(TENANT)
    assert second.ingestion is Ingestion.BULK
    assert second.executor is first.executor

    db.apply(changed(salesforce={"dailyApiCap": 10}))
    third = await tenants.resources(TENANT)
    assert third.ingestion is Ingestion.AUTOMATIC
    assert third.executor is not first.executor


async def test_a_tenant_without_configuration_is_not_found(http: httpx.AsyncClient) -> None:
    with pytest.raises(TenantNotFoundError):
        await orgs(Versions(), http).resources("nobody")

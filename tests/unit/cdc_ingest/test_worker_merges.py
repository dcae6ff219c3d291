"""The stream's merge enrichment: a merge loser's DELETE gets its MasterRecordId from one queryAll
per object and batch of deleted ids; other deletions and objects that cannot merge cost nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import ChangeSink
from services.cdc_ingest.store import Store
from services.cdc_ingest.translate import read_change
from services.cdc_ingest.worker import TenantWorker
from services.common.change import ChangeKind
from services.common.contract import from_proto
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.values import Reference

pytestmark = pytest.mark.unit


class FakeRest:
    """Describe's ``mergeable`` and queryAll over a recycle bin: loser id → MasterRecordId."""

    def __init__(self, mergeable: set[str], recycle_bin: dict[str, str | None]) -> None:
        self._mergeable = mergeable
        self.recycle_bin = recycle_bin
        self.queries: list[str] = []

    async def mergeable(self, entity: str) -> bool:
        return entity in self._mergeable

    async def query(
        self, soql: str, *, all_rows: bool = False, backfill: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        assert all_rows, "deleted records are only visible to queryAll"
        self.queries.append(soql)
        for record_id, master in self.recycle_bin.items():
            if f"'{record_id}'" in soql:
                yield {"Id": record_id, "MasterRecordId": master}


def worker(rest: FakeRest) -> TenantWorker:
    config = parse_tenant_config(
        {
            "apiVersion": "duplex.dev/v1",
            "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {
                "salesforce": {
                    "instanceUrl": "https://acme.example",
                    "apiVersion": "62.0",
                    "auth": {
                        "mode": "password",
                        "clientId": "c",
                        "clientSecret": {"secretRef": {"env": "S"}},
                        "username": "u",
                        "password": {"secretRef": {"env": "P"}},
                    },
                    "dailyApiCap": 1000,
                },
                "sync": {"cdc": True},
                "objects": [
                    {
                        "name": name.lower(),
                        "app": {"object": name.lower()},
                        "salesforce": {"object": name, "externalIdField": "Duplex_Id__c"},
                        "fields": [{"app": "name", "salesforce": "Name"}],
                    }
                    for name in ("Account", "Opportunity")
                ],
            },
        }
    )
    settings = CdcIngestSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
    )

    async def no_pubsub(_org_id: str) -> Any:
        raise AssertionError("not used")

    return TenantWorker(
        tenant_id="acme",
        config=config,
        settings=settings,
        rest=cast(SalesforceRest, rest),
        pubsub_factory=no_pubsub,
        store=cast(Store, None),
        sink=cast(ChangeSink, None),
    )


def change(entity: str, record_id: str, kind: ChangeKind) -> pb.RecordChanged:
    return read_change(
        tenant_id="acme",
        entity=entity,
        record_id=record_id,
        values={},
        modstamp=datetime(2024, 5, 1, tzinfo=UTC),
        kind=kind,
        cursor="",
        channel="/data/ChangeEvents",
    )


@pytest.mark.parametrize(
    ("changes", "recycle_bin", "queries", "masters"),
    [
        # Two losers of one merge and an ordinary deletion: one query, two winners.
        (
            [
                ("Account", "001L1", ChangeKind.DELETE),
                ("Account", "001L2", ChangeKind.DELETE),
                ("Account", "001X", ChangeKind.DELETE),
            ],
            {"001L1": "001W", "001L2": "001W", "001X": None},
            1,
            {"001L1": "001W", "001L2": "001W"},
        ),
        # No deletion, or only deletions of an object that cannot merge: no query at all.
        ([("Account", "001A", ChangeKind.UPDATE)], {}, 0, {}),
        ([("Opportunity", "006A", ChangeKind.DELETE)], {"006A": "006W"}, 0, {}),
        # 450 deletions: batches of 200 ids.
        (
            [("Account", f"001D{i:04d}", ChangeKind.DELETE) for i in range(450)],
            {"001D0007": "001W"},
            3,
            {"001D0007": "001W"},
        ),
    ],
)
async def test_merge_losers_deletions_carry_their_master(
    changes: list[tuple[str, str, ChangeKind]],
    recycle_bin: dict[str, str | None],
    queries: int,
    masters: dict[str, str],
) -> None:
    rest = FakeRest({"Account"}, recycle_bin)
    messages = [change(*c) for c in changes]
    await worker(rest).stream.add_masters(messages)
    assert len(rest.queries) == queries
    assert all("IsDeleted = true" in q for q in rest.queries)
    carried = {m.record_id: from_proto(m).fields.get("MasterRecordId") for m in messages}
    assert {rid: value for rid, value in carried.items() if value is not None} == {
        rid: Reference(master) for rid, master in masters.items()
    }

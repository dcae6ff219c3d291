"""100,000 rows through ``query`` + ``nextRecordsUrl``: linear work, pages of constant cost.

Marked ``slow`` (excluded from ``make test``); run with ``pytest -m slow``.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import install_error_handlers
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.query_api import build_query_router
from services.salesforce_emulator.schema import STANDARD_OBJECTS
from services.salesforce_emulator.soql_engine import InMemoryRecords

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ROWS = 100_000
OBJECTS = {o.name: o for o in STANDARD_OBJECTS}


def test_100k_rows_stream_in_linear_time() -> None:
    ids = IdFactory()
    base = datetime(2024, 5, 1, tzinfo=UTC)
    rows: list[dict[str, JsonValue]] = [
        {
            "Id": ids.next("001"),
            "IsDeleted": False,
            "Name": f"Account {i}",
            "NumberOfEmployees": i % 500,
            # Many rows share a stamp, and stamps are not in insertion order.
            "SystemModstamp": f"{base + timedelta(seconds=(i * 7919) % 20_000):%Y-%m-%dT%H:%M:%S}.000+0000",
        }
        for i in range(ROWS)
    ]
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(
        build_query_router(
            InMemoryRecords({"Account": rows}),
            lambda org: OBJECTS,
            lambda: CallContext("00D5g0000000001AAA", "0055g0000000001AAA", "59.0"),
        )
    )
    client = TestClient(app)
    soql = (
        "SELECT Id, Name, SystemModstamp FROM Account WHERE NumberOfEmployees >= 0 "
        "AND SystemModstamp > 2024-04-30T00:00:00Z ORDER BY SystemModstamp, Id"
    )
    started = time.perf_counter()
    body = client.get("/services/data/v59.0/query/", params={"q": soql}).json()
    first_page = time.perf_counter() - started
    page_times: list[float] = []
    seen = len(body["records"])
    last = (body["records"][-1]["SystemModstamp"], body["records"][-1]["Id"])
    while not body["done"]:
        tick = time.perf_counter()
        body = client.get(body["nextRecordsUrl"]).json()
        page_times.append(time.perf_counter() - tick)
        first = (body["records"][0]["SystemModstamp"], body["records"][0]["Id"])
        assert first > last
        last = (body["records"][-1]["SystemModstamp"], body["records"][-1]["Id"])
        seen += len(body["records"])
    total = time.perf_counter() - started
    print(f"\n100k rows: first page {first_page:.2f}s, {len(page_times)} more pages, total {total:.2f}s")
    assert seen == ROWS
    # Later pages cost no more than early ones (no re-evaluation per page); medians absorb GC pauses.
    assert statistics.median(page_times[-10:]) < 3 * max(statistics.median(page_times[:10]), 0.005)
    assert total < 60

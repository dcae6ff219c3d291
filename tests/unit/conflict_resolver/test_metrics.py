"""What a committed batch records: app updates observe origin commit → published (stage=app_update_published)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.common.change import Side
from services.common.metrics import Metrics
from services.conflict_resolver.handlers import count_resolved
from services.conflict_resolver.resolve import MappedChange, Resolution
from tests.unit.conflict_resolver.test_resolve import T0, change, link, run

pytestmark = pytest.mark.unit

LATENCY = "duplex_end_to_end_latency_seconds"
PUBLISHED = {"tenant": "acme", "stage": "app_update_published"}
LINKED = link(crm_record_id="001A", app_record_id="a1")


def resolved(*changes: MappedChange) -> list[tuple[MappedChange, Resolution]]:
    return list(zip(changes, run(*changes, start=LINKED), strict=True))


@pytest.mark.parametrize(
    ("changes", "count", "total"),
    [
        # A Salesforce edit of a linked record becomes an app update: 30 s from commit to publish.
        pytest.param([change(Side.CRM, {"name": "Acme"}, at=0)], 1, 30.0, id="salesforce edit"),
        # An app edit becomes a Salesforce write only: that latency is the writer's (stage=written).
        pytest.param([change(Side.APP, {"name": "Acme"}, at=0)], 0, 0.0, id="app edit"),
        pytest.param(
            [change(Side.CRM, {"name": "A"}, at=0, n=1), change(Side.CRM, {"name": "B"}, at=10, n=2)],
            2,
            30.0 + 20.0,
            id="two salesforce edits",
        ),
        pytest.param(
            [change(Side.APP, {"name": "A"}, at=0, n=1), change(Side.CRM, {"name": "B"}, at=10, n=2)],
            1,
            20.0,
            id="an app edit, then a salesforce edit",
        ),
    ],
)
def test_app_updates_observe_origin_to_published(changes: list[MappedChange], count: int, total: float) -> None:
    metrics = Metrics(CollectorRegistry())
    batch = resolved(*changes)
    assert sum(r.app_update is not None for _, r in batch) == count

    count_resolved(metrics, batch, T0 + timedelta(seconds=30))

    assert (metrics.registry.get_sample_value(f"{LATENCY}_count", PUBLISHED) or 0) == count
    assert (metrics.registry.get_sample_value(f"{LATENCY}_sum", PUBLISHED) or 0) == pytest.approx(total)
    # The resolver never claims the written stage.
    assert metrics.registry.get_sample_value(f"{LATENCY}_count", {"tenant": "acme", "stage": "written"}) is None


def test_echoes_and_conflicts_are_still_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    batch = resolved(change(Side.CRM, {"name": "Acme"}, at=0, client="duplex-acme"))
    (_, resolution) = batch[0]
    assert resolution.echo is not None

    count_resolved(metrics, batch, T0)

    labels = {"tenant": "acme", "side": "crm", "reason": str(resolution.echo)}
    assert metrics.registry.get_sample_value("duplex_echoes_dropped_total", labels) == 1

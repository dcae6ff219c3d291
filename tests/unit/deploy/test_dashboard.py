"""Duplex's Grafana dashboard (helm/duplex/files/dashboards/duplex.json) against the code, without
Grafana: every metric a panel reads is one the services register, by labels it has, and the panels
cover what an SRE watches per tenant."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.test_alert_rules import SCRAPE_LABELS, _exported

DASHBOARD = Path(__file__).resolve().parents[3] / "helm" / "duplex" / "files" / "dashboards" / "duplex.json"
BOARD: dict[str, Any] = json.loads(DASHBOARD.read_text())
TARGETS = [(panel["title"], t["expr"]) for panel in BOARD["panels"] for t in panel["targets"]]


@pytest.mark.parametrize(("title", "expr"), TARGETS, ids=[f"{t}:{i}" for i, (t, _) in enumerate(TARGETS)])
def test_panels_read_exported_metrics_by_their_labels(title: str, expr: str) -> None:
    exported = _exported()
    # Histograms are read through their _bucket series.
    names = {re.sub(r"_bucket$", "", n) for n in re.findall(r"\bduplex_[a-z_]+\b", expr)}
    assert names, expr
    assert names <= exported.keys(), f"{title}: not exported: {names - exported.keys()}"
    labels = SCRAPE_LABELS.union({"le"}, *(exported[name] for name in names))
    used = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")}
    used |= set(re.findall(r"([a-z_]+)=~?\"", expr))
    assert used <= labels, f"{title}: no such label {used - labels}"


def test_every_tenant_panel_follows_the_tenant_variable() -> None:
    (tenant,) = [v for v in BOARD["templating"]["list"] if v["name"] == "tenant"]
    assert "duplex_events_total" in tenant["query"]["query"]
    for title, expr in TARGETS:
        if "tenant" in expr and "by (tenant" in expr:
            assert 'tenant=~"$tenant"' in expr, title


def test_the_dashboard_shows_what_the_console_issue_asks_for() -> None:
    shown = " ".join(expr for _, expr in TARGETS)
    for metric in (
        "duplex_events_total",
        "duplex_consumer_group_lag_messages",
        "duplex_end_to_end_latency_seconds_bucket",
        "duplex_api_calls_total",
        "duplex_api_budget_remaining",
        "duplex_echoes_dropped_total",
        "duplex_conflicts_decided_total",
        "duplex_writer_records_total",
        "duplex_dlq_messages_total",
    ):
        assert metric in shown
    # The consumers' own lag freezes when they stall; the board shows the broker's.
    assert "duplex_consumer_lag_messages" not in shown
    ids = [p["id"] for p in BOARD["panels"]]
    assert len(ids) == len(set(ids))

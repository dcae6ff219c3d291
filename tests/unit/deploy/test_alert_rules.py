"""Duplex's alerts (helm/duplex/files/alerts.yaml) against the code, without Prometheus: every
metric an expression reads is one the services register, every label it groups or selects by is
one of that metric's (or ``namespace``, which scraping adds), and every ``duplex ...`` command an
alert tells the operator to run exists in the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from services.admin.cli import app as cli
from services.common.metrics import Metrics

ALERTS = Path(__file__).resolve().parents[3] / "helm" / "duplex" / "files" / "alerts.yaml"
SCRAPE_LABELS = {"namespace"}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _exported() -> dict[str, set[str]]:
    """Each series name the services export, with its labels."""
    metrics = Metrics(CollectorRegistry())
    exported: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        name = getattr(metric, "_name", None)
        if name is None:
            continue
        suffix = "_total" if getattr(metric, "_type", "") == "counter" else ""
        exported[name + suffix] = set(metric._labelnames)
    return exported


RULES = _rules()


def test_the_file_has_alerts_with_a_severity_and_a_summary() -> None:
    assert len(RULES) >= 5
    names = [rule["alert"] for rule in RULES]
    assert len(names) == len(set(names))
    for rule in RULES:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_expressions_read_exported_metrics_by_their_labels(rule: dict[str, Any]) -> None:
    exported = _exported()
    expr = rule["expr"]
    names = set(re.findall(r"\bduplex_[a-z_]+\b", expr))
    assert names, expr
    assert names <= exported.keys(), f"not exported: {names - exported.keys()}"
    labels = set(SCRAPE_LABELS).union(*(exported[name] for name in names))
    used = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")}
    used |= set(re.findall(r"([a-z_]+)=~?\"", expr))
    assert used <= labels, f"{rule['alert']}: no such label {used - labels}"
    for text in rule["annotations"].values():
        templated = set(re.findall(r"\$labels\.([a-z_]+)", text))
        assert templated <= used, f"{rule['alert']}: the alert has no label {templated - used}"


@pytest.mark.parametrize(
    "command",
    sorted({c for rule in RULES for t in rule["annotations"].values() for c in re.findall(r"`duplex ([^`]*)`", t)}),
)
def test_commands_the_alerts_name_exist(command: str) -> None:
    words = re.sub(r"\{\{.*?\}\}", "", command).split()
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output


def test_lag_alerts_read_the_lag_measured_at_the_broker() -> None:
    # The consumers' own duplex_consumer_lag_messages freezes when a consumer stalls, which is when
    # an alert must fire.
    exprs = [rule["expr"] for rule in RULES]
    assert not [expr for expr in exprs if "duplex_consumer_lag_messages" in expr]
    assert [expr for expr in exprs if "duplex_consumer_group_lag_messages" in expr]

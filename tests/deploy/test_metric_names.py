"""Every metric the dashboard and the alerts query is one relay exports.

The exported names come from relay's own exposition: the registry in
relay.metrics plus the store collector's gauges, rendered as one scrape would
be. An end-to-end test can pass a real scrape to the same helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from promql import exported_metric_names, metric_names_in_expr

ROOT = Path(__file__).resolve().parents[2]


def relay_exports(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    # Without the multiprocess directory, render() reads the process registry,
    # where every family is declared even before it has samples.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from relay import metrics

    exposition = metrics.render(lambda: ({"pending": 1}, None)).decode()
    names = exported_metric_names(exposition)
    return {name for name in names if name.startswith("relay_")}


def queries() -> list[tuple[str, str]]:
    """(where, expression) for every dashboard query and alert expression."""
    found = []
    board = json.loads((ROOT / "deploy/grafana/relay.json").read_text())
    for row in board["panels"]:
        for panel in [row, *row.get("panels", [])]:
            for target in panel.get("targets", []):
                found.append((f"dashboard {panel['title']}", target["expr"]))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    return found


def test_relay_exports_the_documented_families(monkeypatch: pytest.MonkeyPatch) -> None:
    exported = relay_exports(monkeypatch)
    assert {
        "relay_webhooks_total",
        "relay_webhook_rejections_total",
        "relay_webhook_duration_seconds_bucket",
        "relay_bugpilot_requests_total",
        "relay_jobs",
        "relay_oldest_pending_job_age_seconds",
        "relay_circuit_open",
        "relay_build_info",
    } <= exported


@pytest.mark.parametrize(
    ("where", "expr"), [pytest.param(*query, id=query[0]) for query in queries()]
)
def test_query_uses_only_exported_metrics(
    where: str, expr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = metric_names_in_expr(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - relay_exports(monkeypatch)
    assert not unknown, f"{where}: relay does not export {sorted(unknown)}"

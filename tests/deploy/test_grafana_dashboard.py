"""deploy/grafana/relay.json: a well-formed dashboard whose every query parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from promql import metric_names_in_expr, promtool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "relay.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows are only headings)."""
    found = []
    for panel in dashboard()["panels"]:
        found += panel.get("panels", [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_dashboard_identity() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "relay-overview"
    assert board["title"]
    assert "id" not in board or board["id"] is None


def test_datasource_is_chosen_by_the_user() -> None:
    (variable,) = [
        v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"
    ]
    assert variable["name"] == "datasource"
    assert variable["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_panel_has_queries() -> None:
    assert len(panels()) >= 10
    for panel in panels():
        targets = panel.get("targets", [])
        assert targets, panel["title"]
        assert all(target["expr"].strip() for target in targets), panel["title"]
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_panels_are_laid_out() -> None:
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles))
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]


def test_the_promised_views_are_there() -> None:
    used = set()
    for expr in expressions():
        used |= metric_names_in_expr(expr)
    assert used >= {
        "relay_webhooks_total",
        "relay_webhook_rejections_total",
        "relay_bugpilot_requests_total",
        "relay_notes_total",
        "relay_jobs",
        "relay_oldest_pending_job_age_seconds",
        "relay_circuit_open",
    }
    for histogram in (
        "relay_webhook_duration_seconds",
        "relay_bugpilot_request_duration_seconds",
        "relay_helpdesk_request_duration_seconds",
    ):
        quantiles = {
            match
            for expr in expressions()
            if f"{histogram}_bucket" in expr
            for match in re.findall(r"histogram_quantile\((0\.\d+)", expr)
        }
        assert quantiles == {"0.5", "0.95", "0.99"}, histogram


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule, with Grafana's interval
    # variables replaced by what Grafana would put there.
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr),
        }
        for index, expr in enumerate(expressions())
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr

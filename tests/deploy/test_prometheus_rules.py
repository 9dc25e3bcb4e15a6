"""deploy/prometheus: the alert rules pass promtool, each alert has unit tests
that show it firing and staying quiet, and each has its runbook line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import promtool

from relay.errors import InvalidSignature, MissingSignature, StaleTimestamp

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
REQUIRED_ALERTS = {
    "RelaySignatureRejectionsSpike",
    "RelayBugpilotErrorRatioHigh",
    "RelayDeadJobs",
    "RelayOldestPendingJobTooOld",
    "RelayNoWebhooks",
    "RelayCircuitOpenTooLong",
}


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(
        (PROMETHEUS / "alerts.test.yaml").read_text()
    )["tests"]
    return tests


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", "deploy/prometheus/alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "deploy/prometheus/alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # The same tests against rules whose threshold moved must fail, so a pass
    # above means the expectations were really compared.
    rules = (PROMETHEUS / "alerts.yaml").read_text()
    assert "> 900" in rules
    (tmp_path / "alerts.yaml").write_text(rules.replace("> 900", "> 9000"))
    (tmp_path / "alerts.test.yaml").write_text(
        (PROMETHEUS / "alerts.test.yaml").read_text()
    )
    result = run_promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert result.returncode != 0
    assert "RelayOldestPendingJobTooOld" in result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    assert set(alerts()) >= REQUIRED_ALERTS


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_is_annotated(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    for key in ("summary", "description", "runbook"):
        assert rule["annotations"][key].strip(), key
    assert len(rule["annotations"]["runbook"]) <= 200, "runbook text stays short"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_firing_and_quiet_unit_tests(name: str) -> None:
    cases = [
        case
        for test in unit_tests()
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    fires = [bool(case.get("exp_alerts")) for case in cases]
    assert True in fires, f"{name} is never shown firing"
    assert False in fires, f"{name} is never shown staying quiet"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_runbook_has_one_line_per_alert(name: str) -> None:
    runbook = (PROMETHEUS / "RUNBOOK.md").read_text()
    lines = [line for line in runbook.splitlines() if line.startswith(f"- **{name}**")]
    assert len(lines) == 1


def test_runbook_names_no_other_alert() -> None:
    runbook = (PROMETHEUS / "RUNBOOK.md").read_text()
    assert set(re.findall(r"^- \*\*(\w+)\*\*", runbook, re.MULTILINE)) == set(alerts())


def test_signature_alert_counts_exactly_the_signature_reasons() -> None:
    expr = alerts()["RelaySignatureRejectionsSpike"]["expr"]
    (pattern,) = set(re.findall(r'reason=~"([^"]+)"', expr))
    reasons = {MissingSignature.reason, InvalidSignature.reason, StaleTimestamp.reason}
    assert set(pattern.split("|")) == reasons

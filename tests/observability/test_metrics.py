"""What Prometheus scrapes from real relay processes is true, whoever did the work.

Most tests read the ``observed`` deployment (see conftest): four gunicorn
workers answered the deliveries and two worker processes ran the jobs, all
writing into one multiprocess directory, so every total below is a sum over
several processes and must come out exact.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import requests
import yaml
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from relay import __version__
from relay.app import create_app
from relay.config import Settings
from relay.rules import parse_rules
from tests import factories as f
from tests.deploy.promql import exported_metric_names, metric_names_in_expr, promtool
from tests.harness import free_port, wait_for
from tests.observability.conftest import STALE_COUNT, Observed, RunRecord
from tests.observability.support import (
    PATIENCE,
    Deployment,
    Scrape,
    events,
    jobs_in_state,
    json_lines,
    metrics_dir,
    read,
    send_zendesk,
)

ROOT = Path(__file__).resolve().parents[2]


def settle(observed: Observed, name: str, expected: float, **labels: str) -> Scrape:
    """Scrape until ``sum(name{labels})`` reaches ``expected``; return that scrape.

    A job is done in the store a moment before its worker observes the
    attempts histogram; the wait covers only that gap.
    """
    return wait_for(
        lambda: (
            (scrape := observed.scrape()).sum(name, **labels) == expected and scrape
        ),
        timeout=PATIENCE,
        message=f"{name}{labels} never reached {expected}",
    )


# -- web side: four gunicorn workers, one count ----------------------------------------


def test_every_delivery_is_counted_once_across_four_gunicorn_workers(
    observed: Observed,
) -> None:
    web_lines = json_lines(read(observed.web.process))
    answered_by = {
        line["pid"]
        for line in events(web_lines, "http request")
        if line["path"].startswith("/webhooks/")
    }
    assert len(answered_by) >= 2, "the deliveries did not spread over the workers"

    # Whichever gunicorn worker answers the scrape, it adds up all of them.
    for _ in range(8):
        scrape = Scrape.of(observed.web.url)
        assert scrape.sum("relay_webhooks_total") == observed.sent
        for (provider, outcome), count in observed.webhooks.items():
            assert (
                scrape.sum("relay_webhooks_total", provider=provider, outcome=outcome)
                == count
            ), (provider, outcome)
        for (provider, reason), count in observed.rejections.items():
            assert (
                scrape.sum(
                    "relay_webhook_rejections_total", provider=provider, reason=reason
                )
                == count
            ), (provider, reason)
        assert scrape.sum("relay_webhook_duration_seconds_count") == observed.sent
        assert scrape.sum("relay_jobs_enqueued_total") == observed.done + observed.dead


def test_the_start_up_wipe_dropped_what_a_previous_run_left(
    observed: Observed,
) -> None:
    scrape = observed.scrape()
    accepted = scrape.sum("relay_webhooks_total", outcome="accepted")
    assert accepted == observed.webhooks["zendesk", "accepted"]
    assert accepted < STALE_COUNT
    assert not (observed.metrics_dir / "counter_4000000.db").exists()


# -- worker side: two processes, one directory, one count ------------------------------


def test_jobs_run_by_two_worker_processes_are_counted_once(observed: Observed) -> None:
    captured_by = [
        len(
            [
                line
                for line in events(json_lines(read(worker)), "job step")
                if line["step"] == "capture" and line["outcome"] == "ok"
            ]
        )
        for worker in observed.workers
    ]
    assert sum(captured_by) == observed.done
    assert all(captured_by), f"one worker ran no job: {captured_by}"

    scrape = settle(observed, "relay_job_attempts_count", observed.done + observed.dead)
    assert scrape.sum("relay_bugpilot_requests_total", outcome="ok") == observed.done
    assert scrape.sum("relay_notes_total", outcome="ok") == observed.done
    assert (
        scrape.sum("relay_bugpilot_requests_total", outcome="user_not_connected")
        == observed.offline
    )
    assert scrape.sum("relay_notes_total", outcome="failure_note") == observed.dead
    assert scrape.sum("relay_job_attempts_count", state="done") == observed.done
    assert scrape.sum("relay_job_attempts_count", state="dead") == observed.dead
    assert (
        scrape.sum("relay_bugpilot_request_duration_seconds_count")
        == observed.done + observed.offline
    )


def test_queue_depth_and_age_come_from_the_store_at_scrape_time(
    observed: Observed,
) -> None:
    scrape = observed.scrape()
    assert scrape.sum("relay_jobs", state="done") == observed.done
    assert scrape.sum("relay_jobs", state="dead") == observed.dead
    assert scrape.sum("relay_jobs", state="pending") == 0
    assert scrape.sum("relay_jobs", state="noting") == 0
    assert scrape.has("relay_oldest_pending_job_age_seconds")
    assert scrape.sum("relay_oldest_pending_job_age_seconds") == 0
    assert scrape.sum("relay_store_scrape_errors_total") == 0
    # Every process reports the same version; the gauge is their maximum.
    assert scrape.sum("relay_build_info", version=__version__) == 1


def test_the_scrape_passes_promtool(observed: Observed) -> None:
    checked = subprocess.run(
        [promtool(), "check", "metrics"],
        input=observed.scrape().text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- names -----------------------------------------------------------------------------

DESIGN_SERIES = {
    "relay_webhooks_total",
    "relay_webhook_rejections_total",
    "relay_webhook_duration_seconds_bucket",
    "relay_jobs_enqueued_total",
    "relay_bugpilot_requests_total",
    "relay_bugpilot_request_duration_seconds_bucket",
    "relay_notes_total",
    "relay_helpdesk_request_duration_seconds_bucket",
    "relay_jobs",
    "relay_oldest_pending_job_age_seconds",
    "relay_job_attempts_bucket",
    "relay_build_info",
}
"""The series behind every metric DESIGN.md lists."""


def test_every_metric_design_lists_is_in_a_real_scrape(observed: Observed) -> None:
    settle(observed, "relay_job_attempts_count", observed.done + observed.dead)
    exported = exported_metric_names(observed.scrape().text)
    assert exported >= DESIGN_SERIES, sorted(DESIGN_SERIES - exported)


METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def test_every_metric_is_defined_once_in_relay_metrics() -> None:
    source = (ROOT / "relay/metrics.py").read_text()
    names = re.findall(r"^\w+ = \w+\(\n\s+\"(relay_\w+)\"", source, re.MULTILINE)
    assert len(names) == len(set(names)) >= 10

    for path in (ROOT / "relay").rglob("*.py"):
        if path.name == "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "prometheus_client"
            ):
                imported = {alias.name for alias in node.names}
                assert not imported & METRIC_TYPES, f"{path} defines metrics"
            if isinstance(node, ast.Attribute) and node.attr in METRIC_TYPES:
                assert not (
                    isinstance(node.value, ast.Name)
                    and node.value.id == "prometheus_client"
                ), f"{path} defines metrics"


# -- dashboard and alerts against what relay really exports ----------------------------


def dashboard_and_alert_queries() -> list[tuple[str, str]]:
    """(where, expression) for every Grafana query and alert expression."""
    found = []
    board = json.loads((ROOT / "deploy/grafana/relay.json").read_text())

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"dashboard: {panel['title']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(board["panels"])
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            found.append((f"dashboard variable {variable['name']}", query))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    return found


def test_dashboard_and_alerts_query_only_what_a_real_scrape_offers(
    observed: Observed,
) -> None:
    settle(observed, "relay_job_attempts_count", observed.done + observed.dead)
    exported = exported_metric_names(observed.scrape().text)
    queries = dashboard_and_alert_queries()
    assert len(queries) > 10

    missing = {
        where: sorted(metric_names_in_expr(expr) - exported)
        for where, expr in queries
        if metric_names_in_expr(expr) - exported
    }
    assert not missing, f"not in the scrape: {missing}"


# -- a store that cannot be read -------------------------------------------------------


def test_a_scrape_while_the_store_is_down_answers_without_the_store_gauges(
    tmp_path: Path,
) -> None:
    settings = Settings(
        bugpilot_api_key="key-for-tests",
        bugpilot_workspace_id="ws_1",
        database_url=f"sqlite:///{tmp_path / 'relay.db'}",
    )
    app = create_app(settings, rules=parse_rules(f.RULES))
    store = app.extensions["relay"].store

    def down() -> tuple[dict[str, int], float | None]:
        raise OSError("connection refused")

    store.job_counts = down
    client = app.test_client()
    errors = []
    for _ in range(2):
        response = client.get("/metrics")
        assert response.status_code == 200
        scrape = Scrape(response.get_data(as_text=True))
        assert not scrape.has("relay_jobs")
        assert not scrape.has("relay_oldest_pending_job_age_seconds")
        assert scrape.has("relay_build_info")
        errors.append(scrape.sum("relay_store_scrape_errors_total"))
    # Counted on the scrape that failed, once per failed scrape.
    assert errors[1] == errors[0] + 1
    store.close()


# -- web and worker apart, as in Kubernetes --------------------------------------------


def a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_worker_on_its_own_serves_its_counts_on_its_own_port(
    deployment: Deployment,
) -> None:
    worker_dir = Path(metrics_dir(deployment.root, "worker-metrics"))
    # An open circuit left by a process that died with the pod still running.
    stale = a_dead_pid()
    leftover = MmapedDict(str(worker_dir / f"gauge_livemax_{stale}.db"))
    leftover.write_value(
        mmap_key(
            "relay_circuit_open",
            "relay_circuit_open",
            ["destination"],
            ["bugpilot"],
            "stale",
        ),
        1.0,
        0.0,
    )
    leftover.close()

    web = deployment.start_web(
        PROMETHEUS_MULTIPROC_DIR=metrics_dir(deployment.root, "web-metrics")
    )
    port = free_port()
    worker = deployment.start_worker(
        PROMETHEUS_MULTIPROC_DIR=str(worker_dir),
        RELAY_WORKER_METRICS_BIND=f"127.0.0.1:{port}",
    )
    worker_url = f"http://127.0.0.1:{port}"
    for ticket in ("101", "102", "103"):
        assert send_zendesk(web.url, f.zendesk_tags_changed(ticket=ticket)).ok
    wait_for(lambda: len(jobs_in_state(web.url, "done")) == 3, timeout=PATIENCE)

    on_worker = wait_for(
        lambda: (
            (scrape := Scrape.of(worker_url)).sum("relay_job_attempts_count") == 3
            and scrape
        ),
        timeout=PATIENCE,
    )
    assert on_worker.sum("relay_bugpilot_requests_total", outcome="ok") == 3
    assert on_worker.sum("relay_notes_total", outcome="ok") == 3
    assert on_worker.sum("relay_build_info", version=__version__) == 1
    assert on_worker.sum("relay_circuit_open", destination="bugpilot") == 0
    assert not (worker_dir / f"gauge_livemax_{stale}.db").exists()
    # The job gauges come from the web side only; the deliveries too.
    assert not on_worker.has("relay_jobs")
    assert not on_worker.has("relay_webhooks_total")

    on_web = Scrape.of(web.url)
    assert on_web.sum("relay_webhooks_total", outcome="accepted") == 3
    assert on_web.sum("relay_jobs", state="done") == 3
    assert not on_web.has("relay_bugpilot_requests_total")

    assert requests.get(f"{worker_url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{worker_url}/readyz", timeout=5).status_code == 404
    checked = subprocess.run(
        [promtool(), "check", "metrics"],
        input=on_worker.text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    pid = worker.pid
    assert worker.terminate() == 0
    # Its live gauges leave with it; its counters stay for the totals.
    assert not list(worker_dir.glob(f"gauge_live*_{pid}.db"))
    assert (worker_dir / f"counter_{pid}.db").exists()


# -- relay run -------------------------------------------------------------------------


def test_under_relay_run_the_web_scrape_counts_the_worker(relay_run: RunRecord) -> None:
    scrape = relay_run.scrape
    assert scrape.sum("relay_webhooks_total") == relay_run.jobs
    assert scrape.sum("relay_bugpilot_requests_total", outcome="ok") == relay_run.jobs
    assert scrape.sum("relay_notes_total", outcome="ok") == relay_run.jobs
    assert scrape.sum("relay_jobs", state="done") == relay_run.jobs
    assert relay_run.exit_code == 0
    # One page for everything: a second one would be summed twice.
    assert not relay_run.worker_port_answered


def test_relay_web_without_a_configured_directory_makes_one_and_removes_it(
    deployment: Deployment,
) -> None:
    temporary = deployment.root / "tmp"
    temporary.mkdir()
    web = deployment.start_web(TMPDIR=str(temporary), RELAY_WEB_WORKERS="2")
    [directory] = temporary.glob("relay-metrics-*")
    for _ in range(6):
        assert send_zendesk(web.url, f.zendesk_tags_changed(added=("other",))).ok
    scrape = Scrape.of(web.url)
    assert scrape.sum("relay_webhooks_total", outcome="ignored") == 6
    assert scrape.sum("relay_build_info", version=__version__) == 1
    assert list(directory.glob("counter_*.db"))

    assert web.process.terminate() == 0
    assert not directory.exists()


# -- the child_exit hook ---------------------------------------------------------------


def test_a_killed_gunicorn_worker_keeps_its_counts_and_drops_its_live_gauges(
    observed: Observed,
) -> None:
    before = observed.scrape()
    lines = json_lines(read(observed.web.process))
    booted = [line["pid"] for line in lines if "Booting worker" in line["event"]]
    victim = booted[0]
    assert (observed.metrics_dir / f"gauge_livemax_{victim}.db").exists()

    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: not (observed.metrics_dir / f"gauge_livemax_{victim}.db").exists(),
        timeout=PATIENCE,
        message="child_exit did not mark the worker dead",
    )
    wait_for(
        lambda: requests.get(f"{observed.web.url}/readyz", timeout=5).ok,
        timeout=PATIENCE,
    )

    after = observed.scrape()
    for name in (
        "relay_webhooks_total",
        "relay_webhook_duration_seconds_count",
        "relay_jobs_enqueued_total",
    ):
        assert after.sum(name) == before.sum(name), name
    assert after.sum("relay_webhooks_total") == observed.sent
    assert after.sum("relay_build_info", version=__version__) == 1

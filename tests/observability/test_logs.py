"""What a log pipeline receives from real relay processes.

JSON by default: every line of every process is one JSON object, gunicorn's
own lines included. One line per webhook, one per job step, one per HTTP
request, each with its fields. No secret, token or signature, and no full
email address, whatever route it took into a line. ``RELAY_LOG_FORMAT=console``
gives readable lines instead.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from relay import logging as relay_logging
from relay.config import SECRET_VARIABLES
from relay.sandbox import SANDBOX_ZENDESK_SECRET
from tests import factories as f
from tests.harness import wait_for
from tests.observability.conftest import EMAIL, MASKED_EMAIL, Observed, RunRecord
from tests.observability.support import (
    PATIENCE,
    Deployment,
    events,
    jobs_in_state,
    json_lines,
    metrics_dir,
    read,
    send_intercom,
    send_zendesk,
)

WEBHOOK_EVENTS = ("webhook accepted", "webhook ignored", "webhook rejected")
LEADING_KEYS = ["timestamp", "level", "logger", "pid", "event"]


def outputs(observed: Observed) -> dict[str, str]:
    """Each process's whole output, by name."""
    processes = [observed.web.process, *observed.workers]
    return {process.log_path.stem: read(process) for process in processes}


@pytest.fixture(scope="module")
def web_lines(observed: Observed) -> list[dict[str, Any]]:
    return json_lines(read(observed.web.process))


@pytest.fixture(scope="module")
def worker_lines(observed: Observed) -> list[dict[str, Any]]:
    return [line for worker in observed.workers for line in json_lines(read(worker))]


# -- the shape of every line -----------------------------------------------------------


def test_every_line_of_every_process_is_a_json_object(observed: Observed) -> None:
    for name, text in outputs(observed).items():
        lines = json_lines(text)
        assert lines, f"{name} wrote nothing"
        for line in lines:
            assert list(line)[:5] == LEADING_KEYS, (name, line)
            assert line["level"] in ("debug", "info", "warning", "error", "critical")


def test_gunicorn_start_up_lines_are_json_too(web_lines: list[dict[str, Any]]) -> None:
    from_gunicorn = [line for line in web_lines if line["logger"] == "gunicorn.error"]
    phrases = [line["event"] for line in from_gunicorn]
    assert any(phrase.startswith("Starting gunicorn") for phrase in phrases)
    assert any(phrase.startswith("Listening at: http://") for phrase in phrases)
    booted = [line for line in from_gunicorn if "Booting worker" in line["event"]]
    assert len(booted) >= 4
    # The line comes from the worker it announces.
    for line in booted:
        assert line["event"].endswith(f"pid: {line['pid']}")


def test_relay_run_writes_only_json_from_start_to_stop(relay_run: RunRecord) -> None:
    lines = json_lines(relay_run.output)
    phrases = {line["event"] for line in lines}
    assert {"worker started", "worker stopping", "worker stopped"} <= phrases
    assert "Shutting down: Master" in phrases
    assert len(events(lines, "webhook accepted")) == relay_run.jobs
    assert len({line["pid"] for line in lines}) >= 4  # master, two workers, worker
    assert relay_run.exit_code == 0


# -- one line per webhook, per job step, per request -----------------------------------


def test_one_line_per_webhook_with_provider_delivery_outcome_reason_duration(
    observed: Observed, web_lines: list[dict[str, Any]]
) -> None:
    lines = [line for line in web_lines if line["event"] in WEBHOOK_EVENTS]
    assert len(lines) == observed.sent
    for line in lines:
        assert {"provider", "delivery_id", "outcome", "reason", "duration_ms"} <= set(
            line
        ), line
        assert line["event"] == f"webhook {line['outcome']}"
        assert isinstance(line["duration_ms"], int | float)
        assert line["duration_ms"] >= 0
        assert (line["reason"] is None) == (line["outcome"] == "accepted"), line

    assert Counter((line["provider"], line["outcome"]) for line in lines) == (
        observed.webhooks
    )
    rejected = [line for line in lines if line["outcome"] == "rejected"]
    assert Counter((line["provider"], line["reason"]) for line in rejected) == (
        observed.rejections
    )
    ignored = Counter(line["reason"] for line in lines if line["outcome"] == "ignored")
    assert ignored == {"no_rule": 2, "ping": 2, "duplicate": 1}
    accepted = [line for line in lines if line["outcome"] == "accepted"]
    assert all(line["delivery_id"] for line in accepted)


def test_each_webhook_line_pairs_with_its_access_line(
    web_lines: list[dict[str, Any]],
) -> None:
    access = {line["request_id"]: line for line in events(web_lines, "http request")}
    webhooks = [line for line in web_lines if line["event"] in WEBHOOK_EVENTS]
    statuses = {"accepted": {202}, "ignored": {200}}
    for line in webhooks:
        request = access[line["request_id"]]
        assert request["method"] == "POST"
        assert request["path"] == f"/webhooks/{line['provider']}"
        assert request["pid"] == line["pid"]
        expected = statuses.get(line["outcome"], {400, 401, 404, 413, 415, 422, 503})
        assert request["status"] in expected, (line, request)


def test_access_lines_carry_method_path_status_duration_and_request_id(
    web_lines: list[dict[str, Any]],
) -> None:
    access = events(web_lines, "http request")
    assert access
    for line in access:
        assert line["logger"] == "gunicorn.access"
        assert line["method"] in ("GET", "POST")
        assert line["path"].startswith("/")
        assert isinstance(line["status"], int)
        assert line["duration_ms"] >= 0
        assert len(line["request_id"]) == 32
        assert line["remote_addr"] == "127.0.0.1"
    paths = {line["path"] for line in access}
    assert {"/readyz", "/webhooks/zendesk", "/webhooks/intercom"} <= paths


def test_one_line_per_job_step_with_job_rule_action_attempt_outcome_duration(
    observed: Observed, worker_lines: list[dict[str, Any]]
) -> None:
    steps = events(worker_lines, "job step")
    for line in steps:
        assert {
            "job_id",
            "rule",
            "action",
            "attempt",
            "step",
            "outcome",
            "duration_ms",
        } <= set(line), line
        assert line["attempt"] >= 1
        assert line["duration_ms"] >= 0

    done = [line for line in steps if line.get("state") == "done"]
    assert len(done) == observed.done
    for line in done:
        captured = [
            step
            for step in steps
            if step["job_id"] == line["job_id"] and step["step"] == "capture"
        ]
        assert [step["outcome"] for step in captured] == ["ok"]
        assert (line["step"], line["outcome"]) == ("note", "ok")
        assert (line["rule"], line["action"]) == ("screenshot", "upload-screenshot")

    dead = [line for line in steps if line["outcome"] == "dead"]
    assert sorted(line["reason"] for line in dead) == [
        "missing_user_id",
        "user_not_connected",
    ]
    assert all(line["level"] == "warning" for line in dead)
    assert len(steps) == 2 * observed.done + observed.dead


# -- what never reaches a line ---------------------------------------------------------


def test_no_secret_token_or_signature_reaches_any_line(observed: Observed) -> None:
    env = observed.deployment.env()
    secrets = [env[name] for name in SECRET_VARIABLES if env.get(name)]
    assert len(secrets) >= 5
    assert observed.signatures
    for name, text in outputs(observed).items():
        for secret in secrets:
            assert secret not in text, f"{name} shows a secret"
        for signature in observed.signatures:
            assert signature not in text, f"{name} shows a signature"

    # The probe put the webhook secret in a URL path; the line shows the request.
    web_lines = json_lines(read(observed.web.process))
    probes = [
        line
        for line in events(web_lines, "http request")
        if line["path"].startswith("/probe/")
    ]
    assert [line["path"] for line in probes] == ["/probe/[redacted]"]
    assert SANDBOX_ZENDESK_SECRET in secrets


def test_emails_are_masked(observed: Observed, web_lines: list[dict[str, Any]]) -> None:
    for name, text in outputs(observed).items():
        assert EMAIL not in text, f"{name} shows a full email address"
    pings = [
        line
        for line in events(web_lines, "webhook ignored")
        if line["reason"] == "ping"
    ]
    assert MASKED_EMAIL in {line["delivery_id"] for line in pings}


# -- console format --------------------------------------------------------------------


def test_console_format_gives_readable_lines(deployment: Deployment) -> None:
    console = {
        "RELAY_LOG_FORMAT": "console",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir(deployment.root, "metrics"),
    }
    web = deployment.start_web(**console)
    worker = deployment.start_worker(**console)
    ping = f.intercom_ping()
    ping["id"] = EMAIL
    assert send_intercom(web.url, ping).status_code == 200
    accepted = send_zendesk(web.url, f.zendesk_tags_changed(ticket="301"))
    assert accepted.status_code == 202
    wait_for(lambda: len(jobs_in_state(web.url, "done")) == 1, timeout=PATIENCE)

    text = read(web.process) + read(worker)
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)

    def line_with(*parts: str) -> str:
        found = [line for line in lines if all(part in line for part in parts)]
        assert found, f"no line with {parts}:\n{text}"
        return found[0]

    line_with("[info", "Starting gunicorn", "[gunicorn.error]")
    line_with(
        "webhook accepted",
        "provider=zendesk",
        "outcome=accepted",
        "delivery_id=",
        "duration_ms=",
    )
    line_with("webhook ignored", "reason=ping", f"delivery_id={MASKED_EMAIL}")
    line_with("http request", "method=POST", "path=/webhooks/zendesk", "status=202")
    line_with("job step", "job_id=1", "rule=screenshot", "step=note", "outcome=ok")
    assert EMAIL not in text


# -- the pipeline itself, in this process -------------------------------------------


@pytest.fixture
def written(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """A reader of the JSON lines this process wrote to stderr.

    The test calls ``configure`` itself (the stream it binds to must be the
    one captured while the test runs); the logging set-up is put back after.
    """
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    monkeypatch.setattr(relay_logging, "_hidden", ())
    try:
        yield lambda: json_lines(capsys.readouterr().err)
    finally:
        root.handlers[:], level, sys.excepthook, threading.excepthook = saved
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


def test_a_foreign_traceback_becomes_one_json_line(written) -> None:
    relay_logging.configure("info", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gunicorn.error").exception("Exception in worker process")
    [line] = written()
    assert line["event"] == "Exception in worker process"
    assert line["level"] == "error"
    assert "ValueError: boom" in line["exception"]


def test_warnings_and_uncaught_thread_errors_become_json_lines(written) -> None:
    relay_logging.configure("info", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old call", DeprecationWarning, stacklevel=1)

    def fail() -> None:
        raise RuntimeError("thread failed")

    thread = threading.Thread(target=fail, name="relay-job_0")
    thread.start()
    thread.join()
    warned, crashed = written()
    assert warned["logger"] == "py.warnings"
    assert "an old call" in warned["event"]
    assert crashed["event"] == "uncaught exception in thread"
    assert crashed["thread"] == "relay-job_0"
    assert "RuntimeError: thread failed" in crashed["exception"]


def test_secrets_are_redacted_under_any_key_and_emails_masked(written) -> None:
    relay_logging.configure("info", "json")
    relay_logging.hide_values(["s3cret-webhook-value", None, "abc"])
    log = relay_logging.get_logger("relay.test")
    log.info(
        "probe",
        url="https://h/x?key=s3cret-webhook-value",
        signature="v1=abcdef",
        customer="jane@example.com",
        short="abc",
        database="postgresql://relay:hunter22@db/relay",
    )
    [line] = written()
    assert line["url"] == "https://h/x?key=[redacted]"
    assert line["signature"] == "[redacted]"
    assert line["customer"] == "j***@example.com"
    assert line["short"] == "abc"  # too short to be taken for a secret
    assert line["database"] == "postgresql://relay:***@db/relay"

"""Helpers for delivery tests that run real ``relay web`` and ``relay worker``.

Events go in as signed webhooks; what happened is read from the store (the
test process opens the same SQLite file) and from the emulators' own records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from relay.sandbox import (
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_ZENDESK_SECRET,
    Sandbox,
    sandbox_environment,
)
from relay.store import Store
from tests import factories as f
from tests.deployment import ADMIN_TOKEN, Relay
from tests.harness import RelayProcess

FINISHED = ("done", "dead")

RULES = """
version: 1
rules:
  - name: screenshot
    when: {tag: bugpilot_screenshot}
    action: upload-screenshot
    user: email
    description: "Ticket {ticket_id}: {subject}"
    note: "Bugpilot screenshot: {session_info_url}"
    remove_tag: true
  - name: patient
    when: {tag: bugpilot_patient, provider: zendesk}
    action: upload-session
    user: email
    description: "Patient ticket {ticket_id}"
    note: "Bugpilot session: {session_info_url}"
    wait_for_user: 30s
"""


def environment(
    sandbox: Sandbox, tmp_path: Path, rules: str = RULES, **overrides: str
) -> dict[str, str]:
    """A relay environment on the emulators, SQLite in ``tmp_path``, fast retries."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **sandbox_environment(sandbox),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_RULES_FILE": str(rules_file),
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_WEB_WORKERS": "2",
        "RELAY_POLL_INTERVAL": "0.05",
        "RELAY_RETRY_BASE": "0.2",
        "RELAY_RETRY_CAP": "2",
        "RELAY_LEASE_SECONDS": "5",
        "RELAY_COOLDOWN": "0",
    }
    env.update(overrides)
    return env


def use_rules(relay: Relay, rules: str = RULES) -> None:
    """Point ``relay`` (not started yet) at ``rules``."""
    Path(relay.env["RELAY_RULES_FILE"]).write_text(rules)


def open_store(relay: Relay) -> Store:
    return Store.from_url(relay.env["RELAY_DATABASE_URL"])


def send_zendesk(relay: Relay, payload: dict[str, Any]) -> requests.Response:
    body = f.encode(payload)
    headers = f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET)
    return requests.post(
        f"{relay.url}/webhooks/zendesk", data=body, headers=headers, timeout=30
    )


def send_intercom(relay: Relay, payload: dict[str, Any]) -> requests.Response:
    body = f.encode(payload)
    headers = f.intercom_headers(body, secret=SANDBOX_INTERCOM_SECRET)
    return requests.post(
        f"{relay.url}/webhooks/intercom", data=body, headers=headers, timeout=30
    )


def tag_ticket(relay: Relay, ticket: str, tag: str = "bugpilot_screenshot") -> int:
    """Send the webhook of ``tag`` added to a Zendesk ticket; the job id."""
    response = send_zendesk(relay, f.zendesk_tags_changed(ticket=ticket, added=(tag,)))
    assert response.status_code == 202, response.text
    [job_id] = response.json()["jobs"]
    return int(job_id)


def admin(relay: Relay, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    headers.update(kwargs.pop("headers", {}))
    return requests.request(
        method, f"{relay.url}/admin{path}", headers=headers, timeout=30, **kwargs
    )


def wait_finished(
    store: Store, job_ids: Iterable[int], relay: Relay, timeout: float = 60
) -> dict[int, dict[str, Any]]:
    """Wait until every job is done or dead; the jobs by id."""
    wanted = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = {job_id: store.get_job(job_id) for job_id in wanted}
        if all(row and row["state"] in FINISHED for row in rows.values()):
            return {job_id: row for job_id, row in rows.items() if row}
        if time.monotonic() > deadline:
            left = {i: r and r["state"] for i, r in rows.items()}
            raise AssertionError(f"unfinished jobs {left}\n{relay.logs()[-20000:]}")
        time.sleep(0.1)


def wait_until(check: Any, timeout: float = 30, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {message}")
        time.sleep(0.05)


def in_bugpilot_call(store: Store, job_ids: Iterable[int]) -> bool:
    """True when every job is leased and inside its Bugpilot call."""
    rows = [store.get_job(job_id) for job_id in job_ids]
    return all(
        row is not None
        and row["state"] == "pending"
        and row["lease_owner"] is not None
        and row["capture_started_at"] is not None
        for row in rows
    )


def sigterm(process: RelayProcess, timeout: float) -> tuple[int, float]:
    """SIGTERM ``process``; its exit status and how long it took to exit."""
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    try:
        code = process.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"no exit {timeout}s after SIGTERM") from None
    took = time.monotonic() - started
    process.terminate()  # closes the log file; the process is gone already
    return code, took


def ok_captures(sandbox: Sandbox) -> Counter[str]:
    """Successful Bugpilot captures per description (one description per ticket)."""
    state = sandbox.bugpilot.state()
    return Counter(
        {str(k): int(v) for k, v in state["ok_by_description"].items() if k != "None"}
    )


def zendesk_notes(sandbox: Sandbox, ticket: str) -> list[str]:
    tickets = sandbox.zendesk.state()["tickets"]
    if ticket not in tickets:
        return []
    return [c["body"] for c in tickets[ticket]["comments"] if c["public"] is False]


def intercom_notes(sandbox: Sandbox, conversation: str) -> list[str]:
    conversations = sandbox.intercom.state()["conversations"]
    if conversation not in conversations:
        return []
    notes: list[str] = conversations[conversation]["note_bodies"]
    return notes

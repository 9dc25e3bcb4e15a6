"""Ingest: accepted webhooks a second, relay beside a bare Flask app.

Both run under the same gunicorn configuration (relay's production one) and are
hit by wrk with the same pre-signed, all-unique ``ticket.tags_changed`` events,
so every request relay answers 202 is a durably committed event and job.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    base_env,
    descendants,
    free_port,
    peak_rss_mb,
    relay_command,
    start,
    stop,
    wait_ok,
)
from relay.providers import zendesk

SECRET = "bench-secret"
CONNECTIONS = 16
WRK_THREADS = 2
DURATION = 10

RULES = """
version: 1
rules:
  - name: screenshot
    when: {tag: bugpilot_screenshot}
    action: upload-screenshot
"""

BARE_APP = """
from flask import Flask, request

app = Flask("bare")


@app.post("/webhooks/zendesk")
def receive():
    request.get_data()
    return {"status": "accepted", "jobs": [1]}, 202


@app.get("/readyz")
def ready():
    return {"status": "ready"}
"""

WRK_SCRIPT = """
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  requests = {}
  accepted = 0
  other = 0
  local path = args[1] .. "." .. id
  for line in io.lines(path) do
    local sig, ts, body = line:match("([^\\t]*)\\t([^\\t]*)\\t(.*)")
    local headers = {}
    headers["Content-Type"] = "application/json"
    headers["X-Zendesk-Webhook-Signature"] = sig
    headers["X-Zendesk-Webhook-Signature-Timestamp"] = ts
    table.insert(requests, wrk.format("POST", "/webhooks/zendesk", headers, body))
  end
  index = 0
end

function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end

function response(status, headers, body)
  if status == 202 then accepted = accepted + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local a, o = 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("accepted")
    o = o + thread:get("other")
  end
  io.write(string.format(
    "RESULT {\\"requests\\": %d, \\"accepted\\": %d, \\"other\\": %d, " ..
    "\\"p50_ms\\": %.3f, \\"p99_ms\\": %.3f, \\"seconds\\": %.3f}\\n",
    summary.requests, a, o, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


def write_requests(folder: Path, count_per_thread: int, first_ticket: int) -> Path:
    """Signed, unique events on unique tickets, one file per wrk thread."""
    prefix = folder / "requests"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for thread in range(WRK_THREADS):
        lines = []
        for n in range(count_per_thread):
            ticket = str(first_ticket + count_per_thread * thread + n)
            payload = {
                "account_id": 1,
                "id": str(uuid.uuid4()),
                "type": "zen:event-type:ticket.tags_changed",
                "subject": f"zen:ticket:{ticket}",
                "time": stamp,
                "detail": {
                    "actor_id": "1",
                    "id": ticket,
                    "requester_id": "2",
                    "subject": "Checkout fails",
                    "tags": ["bugpilot_screenshot"],
                },
                "event": {"tags_added": ["bugpilot_screenshot"], "tags_removed": []},
            }
            body = json.dumps(payload, separators=(",", ":"))
            signature = zendesk.sign(body.encode(), stamp, SECRET)
            lines.append(f"{signature}\t{stamp}\t{body}")
        Path(f"{prefix}.{thread}").write_text("\n".join(lines) + "\n")
    return prefix


def run_wrk(
    url: str, script: Path, requests_prefix: Path, seconds: int
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(requests_prefix),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"RESULT (\{.*\})", output)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["per_second"] = result["accepted"] / result["seconds"]
    return result


def measure(workdir: Path | None = None) -> dict[str, Any]:
    """Run both servers under wrk; the figures and the relay/bare ratio."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="relay-bench-ingest-"))
    script = tmp / "load.lua"
    script.write_text(WRK_SCRIPT)
    (tmp / "rules.yaml").write_text(RULES)
    (tmp / "bare_app.py").write_text(BARE_APP)
    # Enough unique events that no run cycles back to one already sent; the
    # warm-up gets its own set so the measured run sends only new events.
    (tmp / "warm").mkdir(exist_ok=True)
    (tmp / "load").mkdir(exist_ok=True)
    warm_prefix = write_requests(tmp / "warm", 8_000, first_ticket=1_000_000)
    requests_prefix = write_requests(tmp / "load", 40_000, first_ticket=2_000_000)

    gunicorn_options = ["--worker-class", "gthread", "--workers", "2", "--threads", "4"]
    results: dict[str, Any] = {}

    port = free_port()
    bare = start(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            *gunicorn_options,
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp),
            "bare_app:app",
        ],
        base_env(tmp),
        tmp / "bare.log",
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/readyz", bare)
        run_wrk(f"http://127.0.0.1:{port}", script, warm_prefix, 2)
        results["bare"] = run_wrk(
            f"http://127.0.0.1:{port}", script, requests_prefix, DURATION
        )
    finally:
        stop(bare)

    port = free_port()
    env = {
        **base_env(tmp),
        "RELAY_BIND": f"127.0.0.1:{port}",
        "RELAY_WEB_WORKERS": "2",
        "RELAY_WEB_THREADS": "4",
        "RELAY_DATABASE_URL": f"sqlite:///{tmp / 'relay.db'}",
        "RELAY_RULES_FILE": str(tmp / "rules.yaml"),
        "BUGPILOT_API_KEY": "ws-bench",
        "BUGPILOT_WORKSPACE_ID": "ws_bench",
        "ZENDESK_URL": "http://127.0.0.1:9",
        "ZENDESK_OAUTH_TOKEN": "unused",
        "ZENDESK_WEBHOOK_SECRETS": SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    (tmp / "metrics").mkdir(exist_ok=True)
    relay = start(relay_command("web"), env, tmp / "relay-web.log")
    try:
        cold_start = wait_ok(f"http://127.0.0.1:{port}/readyz", relay)
        results["cold_start_seconds"] = round(cold_start, 3)
        run_wrk(f"http://127.0.0.1:{port}", script, warm_prefix, 2)
        results["relay"] = run_wrk(
            f"http://127.0.0.1:{port}", script, requests_prefix, DURATION
        )
        results["web_worker_peak_rss_mb"] = round(
            max(peak_rss_mb(pid) for pid in descendants(relay.pid)), 1
        )
    finally:
        stop(relay)
    results["ratio"] = round(
        results["relay"]["per_second"] / results["bare"]["per_second"], 3
    )
    return results

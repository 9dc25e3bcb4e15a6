"""Delivery: jobs a second drained from a backlog, beside the latency bound.

The emulated Bugpilot and Zendesk each answer in 50 ms, so one job (a capture
and a note) takes at least 100 ms of waiting, and ``threads`` threads can at
best finish ``threads / 0.1`` jobs a second. The headline is the measured rate
over that bound.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    base_env,
    free_port,
    peak_rss_mb,
    relay_command,
    start,
    stop,
)
from relay import migrate
from relay.model import Requester, TagEvent
from relay.rules import Rule
from relay.sandbox import SandboxControl, sandbox_defaults
from relay.store import Store

LATENCY_MS = 50
THREADS = 32
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
RULE = Rule(
    name="screenshot",
    tag="bugpilot_screenshot",
    action="upload-screenshot",
    note="Bugpilot screenshot: {session_info_url}",
)


def fill_backlog(store: Store, count: int) -> None:
    """``count`` pending jobs whose customer email is already known."""
    now = time.time()
    for offset in range(0, count, 500):
        for number in range(offset, min(offset + 500, count)):
            event = TagEvent(
                provider="zendesk",
                delivery_id=str(uuid.uuid4()),
                target_kind="ticket",
                target_id=str(700_000 + number),
                tags_added=("bugpilot_screenshot",),
                requester=Requester(email="jane@example.com", external_id="user-123"),
                subject="Checkout fails",
            )
            store.ingest(event, [("bugpilot_screenshot", RULE)], cooldown=0, now=now)


def done_count(store: Store) -> int:
    counts, _oldest = store.job_counts()
    return counts.get("done", 0) + counts.get("dead", 0)


def run_case(
    name: str, database_url: str, workers: int, backlog: int, tmp: Path
) -> dict[str, Any]:
    ports = (free_port(), free_port(), free_port())
    sandbox = start(
        [
            sys.executable,
            "-m",
            "relay",
            "sandbox",
            "--quiet",
            "--bugpilot-port",
            str(ports[0]),
            "--zendesk-port",
            str(ports[1]),
            "--intercom-port",
            str(ports[2]),
        ],
        base_env(tmp),
        tmp / f"sandbox-{name}.log",
    )
    environment = sandbox_defaults(ports)
    bugpilot = SandboxControl(environment["BUGPILOT_API_URL"])
    zendesk = SandboxControl(environment["ZENDESK_URL"])
    deadline = time.monotonic() + 30
    while True:
        try:
            bugpilot.state()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    bugpilot.set_all_online(True)
    bugpilot.set_faults(latency_ms=LATENCY_MS)
    zendesk.set_faults(latency_ms=LATENCY_MS)

    store = Store.from_url(database_url)
    migrate.upgrade(store.engine)
    fill_backlog(store, backlog)
    rules = tmp / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: screenshot\n"
        "    when: {tag: bugpilot_screenshot}\n    action: upload-screenshot\n"
    )
    env = {
        **base_env(tmp),
        **environment,
        "RELAY_DATABASE_URL": database_url,
        "RELAY_RULES_FILE": str(rules),
        "RELAY_WORKER_THREADS": str(THREADS),
        "RELAY_POLL_INTERVAL": "0.05",
        "BUGPILOT_RATE_LIMIT": "1000000",
        "ZENDESK_RATE_LIMIT": "1000000",
    }
    started = time.perf_counter()
    processes = [
        start(relay_command("worker"), env, tmp / f"worker-{name}-{n}.log")
        for n in range(workers)
    ]
    peak = 0.0
    try:
        while done_count(store) < backlog:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{name}: backlog not drained in 600 s")
            peak = max([peak, *(peak_rss_mb(p.pid) for p in processes)])
            time.sleep(0.25)
        elapsed = time.perf_counter() - started
        peak = max([peak, *(peak_rss_mb(p.pid) for p in processes)])
    finally:
        for process in processes:
            stop(process)
        stop(sandbox)
    counts, _ = store.job_counts()
    store.close()
    rate = backlog / elapsed
    bound = workers * THREADS / (2 * LATENCY_MS / 1000)
    return {
        "case": name,
        "workers": workers,
        "threads": workers * THREADS,
        "backlog": backlog,
        "seconds": round(elapsed, 2),
        "jobs_per_second": round(rate, 1),
        "bound_per_second": round(bound, 1),
        "ratio_to_bound": round(rate / bound, 3),
        "done": counts.get("done", 0),
        "dead": counts.get("dead", 0),
        "worker_peak_rss_mb": round(peak, 1),
    }


def postgres_database() -> tuple[str, str]:
    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name


def drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(backlog: int = 5000) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-delivery-"))
    results = [
        run_case("sqlite, 1 worker", f"sqlite:///{tmp / 'relay.db'}", 1, backlog, tmp)
    ]
    for workers in (1, 3):
        url, name = postgres_database()
        try:
            label = f"postgresql, {workers} worker{'s' if workers > 1 else ''}"
            results.append(
                run_case(re.sub(r"\W+", "-", label), url, workers, backlog, tmp)
            )
            results[-1]["case"] = label
        finally:
            drop_database(name)
    results[0]["case"] = "sqlite, 1 worker"
    return results

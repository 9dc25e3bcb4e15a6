"""Two web replicas and three workers on one PostgreSQL: each event once.

The load goes to both replicas, with a quarter of the events sent a second time
to the other replica, as a helpdesk retrying through a load balancer would. The
emulators count what reached them: exactly one capture and one note per unique
event. The same backlog drained by one worker and by three gives the
throughput ratio, written to ``RELAY_REPLICA_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from relay.sandbox import SANDBOX_ZENDESK_SECRET
from tests import factories as f
from tests.deployment import ADMIN_TOKEN, Relay
from tests.harness import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

UNIQUE_EVENTS = 2000
DUPLICATE_SHARE = 4  # every fourth event is sent again to the other replica
CALIBRATION_EVENTS = 300
LATENCY_MS = 20


def send_all(
    urls: list[str], payloads: list[dict], session_count: int = 16
) -> list[int]:
    """POST each payload to ``urls[i % len(urls)]`` from a pool; the statuses."""
    sessions = [requests.Session() for _ in range(session_count)]

    def send(index: int) -> int:
        payload = payloads[index]
        body = f.encode(payload)
        headers = f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET)
        url = urls[index % len(urls)]
        session = sessions[index % session_count]
        for _ in range(5):
            response = session.post(
                f"{url}/webhooks/zendesk", data=body, headers=headers, timeout=30
            )
            if response.status_code != 503:
                return response.status_code
            time.sleep(0.2)
        return response.status_code

    with ThreadPoolExecutor(session_count) as pool:
        return list(pool.map(send, range(len(payloads))))


def job_states(relay: Relay) -> dict[str, int]:
    counts: dict[str, int] = {}
    before = None
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    while True:
        params = {"limit": "500", **({"before": str(before)} if before else {})}
        page = requests.get(
            f"{relay.url}/admin/jobs", params=params, headers=auth, timeout=30
        ).json()
        for job in page["jobs"]:
            counts[job["state"]] = counts.get(job["state"], 0) + 1
        before = page["next_before"]
        if before is None:
            return counts


def drain(relay: Relay, total: int, workers: int, timeout: float = 300) -> float:
    """Start ``workers`` workers on the backlog; seconds until every job is done."""
    started = time.monotonic()
    processes = [
        relay.start_worker(name=f"worker-{workers}-{n}") for n in range(workers)
    ]
    wait_for(
        lambda: job_states(relay).get("done", 0) >= total,
        timeout=timeout,
        interval=0.5,
        message=f"backlog of {total} not drained: {job_states(relay)}",
    )
    elapsed = time.monotonic() - started
    for process in processes:
        assert process.terminate() == 0, process.log()[-2000:]
    return elapsed


def tagged(first_ticket: int, count: int) -> list[dict]:
    return [
        f.zendesk_tags_changed(ticket=str(first_ticket + n), requester="8447388090111")
        for n in range(count)
    ]


def test_two_replicas_and_three_workers_process_each_event_once(
    relay: Relay, pg_database
) -> None:
    url, _name = pg_database
    relay.env.update(
        {
            "RELAY_DATABASE_URL": url,
            "RELAY_LOG_LEVEL": "warning",
            "RELAY_WORKER_THREADS": "8",
            "RELAY_RETRY_BASE": "0.5",
            # The per-process rate limits would otherwise be what is measured.
            "BUGPILOT_RATE_LIMIT": "1000000",
            "ZENDESK_RATE_LIMIT": "1000000",
        }
    )
    upgrade = subprocess.run(
        [sys.executable, "-m", "relay", "db", "upgrade"],
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    relay.bugpilot.set_all_online(True)
    relay.bugpilot.set_faults(latency_ms=LATENCY_MS)
    relay.zendesk.set_faults(latency_ms=LATENCY_MS)
    relay.start_web()
    relay.start_web()
    assert len(relay.urls) == 2

    # One worker drains a calibration backlog.
    calibration = tagged(100_000, CALIBRATION_EVENTS)
    assert set(send_all(relay.urls, calibration)) == {202}
    one_worker = drain(relay, CALIBRATION_EVENTS, workers=1)

    # The main load: unique events to both replicas, duplicates crossing over.
    unique = tagged(200_000, UNIQUE_EVENTS)
    duplicates = unique[::DUPLICATE_SHARE]
    load = unique + duplicates
    # Send each duplicate to the replica its original did not go to.
    urls = relay.urls
    statuses = send_all(urls, unique)
    assert statuses.count(202) == UNIQUE_EVENTS, {
        s: statuses.count(s) for s in set(statuses)
    }
    crossed = send_all(list(reversed(urls)), duplicates)
    assert set(crossed) == {200}, {s: crossed.count(s) for s in set(crossed)}

    total = CALIBRATION_EVENTS + UNIQUE_EVENTS
    three_workers = drain(relay, total, workers=3)

    states = job_states(relay)
    assert states == {"done": total}, states

    bugpilot = relay.bugpilot.state()
    captures_per_ticket = bugpilot["ok_by_description"]
    assert len(captures_per_ticket) == total
    assert set(captures_per_ticket.values()) == {1}
    assert bugpilot["action_counts"]["ok"] == total

    tickets = relay.zendesk.state()["tickets"]
    notes = {
        ticket: len(data["comments"])
        for ticket, data in tickets.items()
        if int(ticket) >= 100_000
    }
    assert len(notes) == total
    assert set(notes.values()) == {1}

    one_rate = CALIBRATION_EVENTS / one_worker
    three_rate = UNIQUE_EVENTS / three_workers
    report = {
        "events_sent": len(load) + CALIBRATION_EVENTS,
        "unique_events": total,
        "duplicates_sent": len(duplicates),
        "captures": bugpilot["action_counts"]["ok"],
        "notes": sum(notes.values()),
        "jobs_per_second_one_worker": round(one_rate, 1),
        "jobs_per_second_three_workers": round(three_rate, 1),
        "throughput_ratio": round(three_rate / one_rate, 2),
        "emulator_latency_ms": LATENCY_MS,
    }
    print(json.dumps(report, indent=2))
    if os.environ.get("RELAY_REPLICA_REPORT"):
        with open(os.environ["RELAY_REPLICA_REPORT"], "w") as out:
            json.dump(report, out, indent=2)

"""Hundreds of events through faulty emulators while workers are SIGKILLed.

Three ``relay worker`` processes share the jobs; one of them is killed every
one to two seconds and a fresh one started in its place. Bugpilot, Zendesk and
Intercom add latency, 500s, 429s with Retry-After and connection resets. Each
event tags a ticket or conversation of its own and the rule's description names
it, so the emulators' records show per event how many captures and notes it got.

At the end every job must be done, or dead with a reason; no event may have
two captures, and no ticket two notes carrying the same sessionInfoUrl. The
figures are printed (run with ``-s``), written to ``kill-report.json`` in the
test's tmp directory and, when ``RELAY_KILL_REPORT`` names a file, there too.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from relay.sandbox import SANDBOX_INTERCOM_SECRET, SANDBOX_ZENDESK_SECRET
from relay.store import Store
from tests import factories as f
from tests.delivery.deploy import FINISHED, open_store, use_rules
from tests.deployment import Relay
from tests.harness import RelayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVENTS = 500
INTERCOM_EVERY = 5
"""Every fifth event is an Intercom conversation, the rest Zendesk tickets."""
SEND_RATE = 25.0
"""Events a second, so that work keeps arriving while workers are killed."""
WORKERS = 3
KILL_EVERY = (1.0, 2.0)
KILL_WINDOW = 100.0
"""Kills stop after this many seconds even if jobs are still running."""
FINAL_DRAIN = 60.0
SEED = 20240501

RULES = """
version: 1
rules:
  - name: kill-test
    when: {tag: bugpilot_screenshot}
    action: upload-screenshot
    user: email
    description: "kill test {provider} {ticket_id}"
    note: "Bugpilot screenshot: {session_info_url}"
    remove_tag: true
"""

FAULTS = {
    "latency_ms": 20,
    "latency_jitter_ms": 80,
    "fail_rate": 0.05,
    "rate_limit_rate": 0.04,
    "retry_after": 1,
    "reset_rate": 0.03,
}
SESSION_URL = re.compile(r"http://[^\s\"<>]+/api/v1/session-info/[^\s\"<>]+")


class Sender(threading.Thread):
    """Sends the events at a steady pace; records (provider, target, job id)."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(name="kill-test-sender", daemon=True)
        self.relay = relay
        self.sent: list[tuple[str, str, int]] = []
        self.refused: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        started = time.monotonic()
        for number in range(EVENTS):
            time.sleep(max(0.0, started + number / SEND_RATE - time.monotonic()))
            if number % INTERCOM_EVERY == 0:
                target = f"kill{number}"
                path, body, headers = self._intercom(target)
                provider = "intercom"
            else:
                target = str(900_000 + number)
                path, body, headers = self._zendesk(target)
                provider = "zendesk"
            response = session.post(
                f"{self.relay.url}{path}", data=body, headers=headers, timeout=30
            )
            if response.status_code != 202:
                self.refused.append(f"{response.status_code} {response.text}")
                continue
            [job_id] = response.json()["jobs"]
            self.sent.append((provider, target, int(job_id)))
        session.close()

    @staticmethod
    def _zendesk(ticket: str) -> tuple[str, bytes, dict[str, str]]:
        body = f.encode(f.zendesk_tags_changed(ticket=ticket))
        return (
            "/webhooks/zendesk",
            body,
            f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET),
        )

    @staticmethod
    def _intercom(conversation: str) -> tuple[str, bytes, dict[str, str]]:
        body = f.encode(f.intercom_conversation_tagged(conversation=conversation))
        return (
            "/webhooks/intercom",
            body,
            f.intercom_headers(body, secret=SANDBOX_INTERCOM_SECRET),
        )


class Workers:
    """The worker processes, killed and replaced at random."""

    def __init__(self, relay: Relay, rng: random.Random) -> None:
        self.relay = relay
        self.rng = rng
        self.started = 0
        self.kills = 0
        self.alive: list[RelayProcess] = []
        for _ in range(WORKERS):
            self.start()

    def start(self) -> None:
        self.started += 1
        self.alive.append(
            self.relay.start_worker(f"worker-{self.started}", RELAY_WORKER_THREADS="4")
        )

    def kill_one(self) -> None:
        victim = self.rng.choice(self.alive)
        victim.kill()
        self.kills += 1
        self.alive.remove(victim)
        self.start()


def unfinished(store: Store, job_ids: list[int]) -> list[int]:
    """The jobs among ``job_ids`` that are neither done nor dead."""
    finished: set[int] = set()
    before: int | None = None
    while True:
        rows = store.list_jobs(limit=500, before=before)
        finished.update(row["id"] for row in rows if row["state"] in FINISHED)
        if len(rows) < 500:
            break
        before = rows[-1]["id"]
    return [job_id for job_id in job_ids if job_id not in finished]


def notes_by_target(relay: Relay) -> dict[tuple[str, str], list[str]]:
    """Every internal note on every ticket and conversation."""
    notes: dict[tuple[str, str], list[str]] = {}
    for ticket, body in relay.sandbox.zendesk.state()["tickets"].items():
        notes[("zendesk", ticket)] = [
            comment["body"] for comment in body["comments"] if not comment["public"]
        ]
    for key, body in relay.sandbox.intercom.state()["conversations"].items():
        notes[("intercom", key)] = list(body["note_bodies"])
    return notes


def figures(
    relay: Relay,
    store: Store,
    sender: Sender,
    workers: Workers,
    runtime: float,
) -> dict[str, Any]:
    """What the kill run did, from the store and the emulators' own records."""
    jobs = {job_id: store.get_job(job_id) for _, _, job_id in sender.sent}
    states = Counter(job["state"] if job else "missing" for job in jobs.values())
    dead = [job for job in jobs.values() if job and job["state"] == "dead"]

    bugpilot = relay.sandbox.bugpilot.state()
    captures = Counter(
        action["userProvidedDescription"]
        for action in bugpilot["actions"]
        if action["status"] == 200
    )
    notes = notes_by_target(relay)

    duplicate_notes = 0
    duplicate_bodies = 0
    for bodies in notes.values():
        urls = {url for body in bodies for url in SESSION_URL.findall(body)}
        for url in urls:
            duplicate_notes += max(sum(url in body for body in bodies) - 1, 0)
        duplicate_bodies += len(bodies) - len(set(bodies))

    # A claim that ends writes one attempt row (a capture is followed by its
    # note in the same claim); a claim cut short by a kill writes none.
    cut_short = 0
    for job in jobs.values():
        if job:
            ends = [row for row in job["history"] if row["step"] != "capture"]
            ends += [row for row in job["history"] if row["outcome"] != "ok"]
            ended = len({row["id"] for row in ends})
            cut_short += max(job["attempts"] - ended, 0)
    logs = "\n".join(process.log() for process in relay.processes)

    done_not_delivered = []
    in_doubt_captured = 0
    for provider, target, job_id in sender.sent:
        job = jobs[job_id]
        description = f"kill test {provider} {target}"
        if job and job["state"] == "done":
            url = job["session_info_url"]
            noted = [body for body in notes.get((provider, target), []) if url in body]
            if captures[description] != 1 or len(noted) != 1:
                done_not_delivered.append(job_id)
        elif job and job["dead_reason"] == "capture_in_doubt":
            in_doubt_captured += captures[description]

    return {
        "events": EVENTS,
        "accepted": len(sender.sent),
        "refused": len(sender.refused),
        "worker_kills": workers.kills,
        "workers_started": workers.started,
        "lost": sum(count for state, count in states.items() if state not in FINISHED),
        "done": states["done"],
        "dead": states["dead"],
        "dead_by_reason": dict(Counter(job["dead_reason"] for job in dead)),
        "dead_without_reason": sum(1 for job in dead if not job["dead_reason"]),
        "duplicate_captures": sum(
            count - 1 for count in captures.values() if count > 1
        ),
        "duplicate_notes": duplicate_notes,
        "duplicate_note_bodies": duplicate_bodies,
        "done_without_one_capture_and_one_note": len(done_not_delivered),
        "in_doubt_jobs_captured_once": in_doubt_captured,
        "claims_cut_short_by_kills": cut_short,
        "notes_found_already_written": logs.count("note already present"),
        "bugpilot_calls": bugpilot["action_counts"]["total"],
        "faults_injected": {
            name: getattr(relay.sandbox, name).faults.snapshot()["injected"]
            for name in ("bugpilot", "zendesk", "intercom")
        },
        "runtime_seconds": round(runtime, 1),
    }


def report(result: dict[str, Any], tmp_path: Path) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    (tmp_path / "kill-report.json").write_text(text)
    wanted = os.environ.get("RELAY_KILL_REPORT")
    if wanted:
        Path(wanted).write_text(text)
    print(f"\nkill test figures:\n{text}")


def test_workers_killed_at_random_lose_nothing_and_repeat_nothing(
    relay: Relay, tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    use_rules(relay, RULES)
    relay.bugpilot.set_all_online()
    for seed, name in enumerate(("bugpilot", "zendesk", "intercom"), start=SEED):
        getattr(relay, name).set_faults(seed=seed, **FAULTS)
    relay.start_web(RELAY_WEB_THREADS="8")
    workers = Workers(relay, rng)
    store = open_store(relay)

    sender = Sender(relay)
    sender.start()
    kill_until = time.monotonic() + KILL_WINDOW
    while time.monotonic() < kill_until:
        time.sleep(rng.uniform(*KILL_EVERY))
        if not sender.is_alive():
            ids = [job_id for _, _, job_id in sender.sent]
            if not unfinished(store, ids):
                break
        workers.kill_one()
    sender.join(timeout=60)

    # No more kills: the jobs the last victims held come back after their
    # lease and finish.
    job_ids = [job_id for _, _, job_id in sender.sent]
    drain_until = time.monotonic() + FINAL_DRAIN
    while unfinished(store, job_ids) and time.monotonic() < drain_until:
        time.sleep(0.5)

    result = figures(relay, store, sender, workers, time.monotonic() - started)
    report(result, tmp_path)
    store.close()

    assert sender.refused == []
    assert result["accepted"] == EVENTS
    assert result["worker_kills"] >= 8  # one every two seconds at least
    assert result["lost"] == 0, unfinished(store, job_ids)
    assert result["dead_without_reason"] == 0
    assert set(result["dead_by_reason"]) <= {"capture_in_doubt"}
    assert result["duplicate_captures"] == 0
    assert result["duplicate_notes"] == 0
    assert result["duplicate_note_bodies"] == 0
    assert result["done_without_one_capture_and_one_note"] == 0

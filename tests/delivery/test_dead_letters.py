"""Dead jobs end to end: list, show, replay and purge, by CLI and /admin.

The jobs die for a reason the emulators control (the user is offline and the
rule does not wait), so a replay can then succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from relay.store import Store
from tests.delivery.deploy import (
    admin,
    ok_captures,
    open_store,
    tag_ticket,
    use_rules,
    wait_finished,
    wait_until,
)
from tests.deployment import ADMIN_TOKEN, Relay

pytestmark = pytest.mark.e2e


def relay_cli(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(relay: Relay) -> Store:
    use_rules(relay)
    relay.start_web()
    relay.start_worker()
    return open_store(relay)


def dead_and_done(relay: Relay, store: Store, dead: int, done: int) -> list[int]:
    """Jobs that die (offline user) followed by jobs that get done; their ids."""
    relay.bugpilot.set_faults(offline_next=dead)
    dying = [tag_ticket(relay, str(7001 + n)) for n in range(dead)]
    wait_finished(store, dying, relay)
    living = [tag_ticket(relay, str(7101 + n)) for n in range(done)]
    wait_finished(store, living, relay)
    return dying + living


def test_dead_jobs_are_listed_by_state_page_by_page(relay: Relay) -> None:
    store = start(relay)
    ids = dead_and_done(relay, store, dead=3, done=2)
    dead_ids = sorted(ids[:3], reverse=True)

    first = admin(relay, "GET", "/jobs", params={"state": "dead", "limit": 2}).json()
    assert [job["id"] for job in first["jobs"]] == dead_ids[:2]
    assert {job["dead_reason"] for job in first["jobs"]} == {"user_not_connected"}
    page = {"state": "dead", "limit": 2, "before": first["next_before"]}
    second = admin(relay, "GET", "/jobs", params=page).json()
    assert [job["id"] for job in second["jobs"]] == dead_ids[2:]
    assert second["next_before"] is None
    done = admin(relay, "GET", "/jobs", params={"state": "done"}).json()
    assert sorted(job["id"] for job in done["jobs"]) == sorted(ids[3:])

    listed = relay_cli(relay, "jobs", "list", "--state", "dead", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [int(line.split()[0]) for line in lines[:2]] == dead_ids[:2]
    assert all("user_not_connected" in line for line in lines[:2])
    assert lines[2] == f"more: relay jobs list --before {dead_ids[1]}"
    rest = relay_cli(
        relay, "jobs", "list", "--state", "dead", "--before", lines[2].split()[-1]
    )
    assert [int(line.split()[0]) for line in rest.stdout.splitlines()] == dead_ids[2:]
    store.close()


def test_a_job_is_shown_with_its_attempt_history(relay: Relay) -> None:
    store = start(relay)
    relay.bugpilot.set_faults(offline_next=1)
    job_id = tag_ticket(relay, "7201")
    wait_finished(store, [job_id], relay)

    shown = admin(relay, "GET", f"/jobs/{job_id}").json()
    assert (shown["state"], shown["dead_reason"]) == ("dead", "user_not_connected")
    [attempt] = shown["history"]
    assert attempt["at"].endswith("Z")
    assert (attempt["step"], attempt["outcome"]) == ("capture", "dead")
    assert (attempt["http_status"], attempt["error_code"]) == (
        404,
        "USER_NOT_CONNECTED",
    )
    assert isinstance(attempt["duration_ms"], int)

    printed = relay_cli(relay, "jobs", "show", str(job_id))
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == shown
    missing = relay_cli(relay, "jobs", "show", "999999")
    assert missing.returncode == 1
    assert "job 999999 not found" in missing.stderr
    assert admin(relay, "GET", "/jobs/999999").status_code == 404
    store.close()


def test_one_dead_job_or_all_of_them_can_be_replayed(relay: Relay) -> None:
    store = start(relay)
    ids = dead_and_done(relay, store, dead=4, done=1)
    first, second, *others = ids[:4]
    done_id = ids[4]

    replayed = admin(relay, "POST", f"/jobs/{first}/retry")
    assert replayed.status_code == 200
    assert replayed.json() == {"status": "retried", "jobs": [first]}
    cli = relay_cli(relay, "jobs", "retry", str(second))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"job {second}: retried"
    jobs = wait_finished(store, [first, second], relay)
    assert [job["state"] for job in jobs.values()] == ["done", "done"]
    assert [step["step"] for step in jobs[first]["history"]][:2] == [
        "capture",
        "replay",
    ]

    everything = relay_cli(relay, "jobs", "retry", "--state", "dead")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines() == [f"job {i}: retried" for i in others]
    jobs = wait_finished(store, others, relay)
    assert [job["state"] for job in jobs.values()] == ["done", "done"]
    assert admin(relay, "POST", "/jobs/retry").json() == {
        "status": "retried",
        "jobs": [],
    }

    # Every ticket got exactly one capture, the replayed ones included.
    assert sorted(ok_captures(relay.sandbox).values()) == [1] * 5

    refused = relay_cli(relay, "jobs", "retry", str(done_id))
    assert refused.returncode == 1
    assert f"job {done_id}: not retried, it is not dead" in refused.stderr
    conflict = admin(relay, "POST", f"/jobs/{done_id}/retry")
    assert conflict.status_code == 409
    assert conflict.json() == {"error": "job_not_dead"}
    assert store.get_job(done_id)["state"] == "done"  # type: ignore[index]
    store.close()


def test_purge_deletes_only_finished_jobs_older_than_asked(relay: Relay) -> None:
    store = start(relay)
    ids = dead_and_done(relay, store, dead=1, done=1)
    relay.bugpilot.set_faults(rate_limit_next=1, retry_after=3600)
    waiting = tag_ticket(relay, "7301")  # told to come back in an hour
    wait_until(lambda: (store.get_job(waiting) or {}).get("last_error"))

    kept = relay_cli(relay, "jobs", "purge", "--older-than", "1h")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("purged 0 job(s)")
    assert admin(relay, "POST", "/jobs/purge", params={"older_than": "0"}).json() == {
        "status": "purged",
        "purged": 2,
    }
    assert all(store.get_job(job_id) is None for job_id in ids)
    assert store.get_job(waiting) is not None
    assert relay_cli(relay, "jobs", "purge", "--older-than", "0s").stdout.startswith(
        "purged 0 job(s)"
    )
    store.close()


def test_admin_calls_without_the_token_are_refused_and_change_nothing(
    relay: Relay,
) -> None:
    store = start(relay)
    dead_id, done_id = dead_and_done(relay, store, dead=1, done=1)

    calls = [
        ("GET", "/jobs"),
        ("GET", f"/jobs/{dead_id}"),
        ("POST", f"/jobs/{dead_id}/retry"),
        ("POST", "/jobs/retry"),
        ("POST", "/jobs/purge?older_than=0"),
    ]
    right_token_wrong_scheme = f"Basic {ADMIN_TOKEN}"
    for header in (None, "Bearer wrong", right_token_wrong_scheme, "Bearer"):
        headers = {"Authorization": header} if header else {}
        for method, path in calls:
            answer = requests.request(
                method, f"{relay.url}/admin{path}", headers=headers, timeout=10
            )
            assert answer.status_code == 401, (header, method, path)
            assert answer.json() == {"error": "unauthorized"}

    assert store.get_job(dead_id)["state"] == "dead"  # type: ignore[index]
    assert store.get_job(done_id)["state"] == "done"  # type: ignore[index]
    assert len(relay.bugpilot.state()["actions"]) == 2
    store.close()

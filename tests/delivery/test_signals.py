"""A real ``relay worker`` stopped by SIGTERM or killed by SIGKILL mid-job."""

from __future__ import annotations

import signal
import time

import pytest

from tests.delivery.deploy import (
    in_bugpilot_call,
    ok_captures,
    open_store,
    sigterm,
    tag_ticket,
    use_rules,
    wait_finished,
    wait_until,
    zendesk_notes,
)
from tests.deployment import Relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTE_REQUEST = "PUT /api/v2/tickets/<int:ticket_id>"


def test_sigterm_stops_claiming_finishes_the_jobs_in_hand_and_exits_0(
    relay: Relay,
) -> None:
    use_rules(relay)
    relay.start_web()
    worker = relay.start_worker(RELAY_DRAIN_TIMEOUT="20")
    store = open_store(relay)
    relay.bugpilot.set_faults(latency_ms=1500)
    job_ids = [tag_ticket(relay, str(5001 + n)) for n in range(3)]
    wait_until(lambda: in_bugpilot_call(store, job_ids), message=relay.logs())

    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    late = tag_ticket(relay, "5009")  # arrives while the worker drains
    code = worker.process.wait(timeout=25)
    took = time.monotonic() - started
    worker.terminate()  # closes the log file

    assert code == 0, worker.log()
    assert took < 20
    jobs = [store.get_job(job_id) for job_id in job_ids]
    assert [job["state"] for job in jobs if job] == ["done"] * 3
    unclaimed = store.get_job(late)
    assert unclaimed is not None
    assert (unclaimed["state"], unclaimed["attempts"]) == ("pending", 0)
    assert '"worker stopped"' in worker.log()
    store.close()


def test_sigterm_releases_what_it_cannot_finish_within_the_drain_timeout(
    relay: Relay,
) -> None:
    use_rules(relay)
    relay.start_web()
    worker = relay.start_worker(RELAY_DRAIN_TIMEOUT="1")
    store = open_store(relay)
    relay.bugpilot.set_faults(latency_ms=6000)
    job_ids = [tag_ticket(relay, str(5101 + n)) for n in range(2)]
    wait_until(lambda: in_bugpilot_call(store, job_ids), message=relay.logs())

    code, took = sigterm(worker, timeout=15)
    assert code == 0, worker.log()
    assert took < 5  # the calls take six seconds: they were not waited for
    for job_id in job_ids:
        job = store.get_job(job_id)
        assert job is not None
        assert (job["state"], job["lease_owner"]) == ("pending", None)
        assert job["history"][-1]["step"] == "drain"

    # The calls cut off still reach Bugpilot; the next worker does not repeat them.
    relay.bugpilot.clear_faults()
    relay.start_worker("second")
    jobs = wait_finished(store, job_ids, relay)
    assert {job["dead_reason"] for job in jobs.values()} == {"capture_in_doubt"}
    wait_until(lambda: sum(ok_captures(relay.sandbox).values()) == 2, timeout=15)
    assert set(ok_captures(relay.sandbox).values()) == {1}
    for ticket in ("5101", "5102"):
        [note] = zendesk_notes(relay.sandbox, ticket)
        assert "will not ask twice" in note
    store.close()


def test_sigkill_during_the_bugpilot_call_ends_in_doubt_never_sent_twice(
    relay: Relay,
) -> None:
    use_rules(relay)
    relay.start_web()
    worker = relay.start_worker()
    store = open_store(relay)
    relay.bugpilot.set_faults(latency_ms=1500)
    job_ids = [tag_ticket(relay, str(5201 + n)) for n in range(2)]
    wait_until(lambda: in_bugpilot_call(store, job_ids), message=relay.logs())

    worker.kill()
    relay.bugpilot.clear_faults()
    relay.start_worker("replacement")
    jobs = wait_finished(store, job_ids, relay)

    assert {job["dead_reason"] for job in jobs.values()} == {"capture_in_doubt"}
    assert set(ok_captures(relay.sandbox).values()) <= {1}
    assert len(relay.bugpilot.state()["actions"]) == 2
    store.close()


def test_sigkill_before_the_bugpilot_call_is_taken_over_and_delivered(
    relay: Relay,
) -> None:
    use_rules(relay)
    relay.start_web()
    worker = relay.start_worker()
    store = open_store(relay)
    relay.zendesk.set_faults(latency_ms=3000)  # the customer lookup hangs
    job_id = tag_ticket(relay, "5301")
    wait_until(
        lambda: (store.get_job(job_id) or {}).get("lease_owner"), message=relay.logs()
    )
    assert relay.bugpilot.state()["actions"] == []

    worker.kill()
    relay.zendesk.clear_faults()
    relay.start_worker("replacement")
    job = wait_finished(store, [job_id], relay)[job_id]

    assert job["state"] == "done"
    assert job["attempts"] == 2
    assert ok_captures(relay.sandbox) == {"Ticket 5301: Cannot login to mobile app": 1}
    assert len(zendesk_notes(relay.sandbox, "5301")) == 1
    store.close()


def test_sigkill_during_the_note_write_does_not_write_it_twice(relay: Relay) -> None:
    use_rules(relay)
    relay.start_web()
    worker = relay.start_worker()
    store = open_store(relay)
    relay.zendesk.set_faults(latency_ms=2000)
    job_id = tag_ticket(relay, "5401")

    # Zendesk counts the note request on arrival, then takes two seconds.
    def note_sent() -> bool:
        return bool(relay.zendesk.state()["requests"].get(NOTE_REQUEST))

    wait_until(note_sent, message=relay.logs())
    worker.kill()
    relay.start_worker("replacement")
    job = wait_finished(store, [job_id], relay)[job_id]

    assert job["state"] == "done"
    assert sum(ok_captures(relay.sandbox).values()) == 1
    notes = zendesk_notes(relay.sandbox, "5401")
    assert notes == [f"Bugpilot screenshot: {job['session_info_url']}"]
    assert relay.zendesk.state()["requests"][NOTE_REQUEST] == 1
    store.close()

"""``Worker.run`` in a thread: job threads, lease keeping and the drain on stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from relay.model import Requester
from relay.worker import Worker
from tests.delivery.support import Desk, Holds, steps

EMAIL = Requester(email="jane@example.com")


@contextmanager
def running(
    worker: Worker, *, drain_timeout: float = 10.0
) -> Iterator[threading.Event]:
    """Run ``worker`` in a thread until the block ends and the drain is over."""
    stop = threading.Event()
    thread = threading.Thread(
        target=worker.run, args=(stop,), kwargs={"drain_timeout": drain_timeout}
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=drain_timeout + 5)
        assert not thread.is_alive()


def wait_until(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def held(desk: Desk, worker: Worker, count: int) -> Callable[[], bool]:
    """True once ``count`` jobs are inside their Bugpilot call."""

    def check() -> bool:
        rows = desk.store.list_jobs(state="pending")
        calling = [
            row
            for row in rows
            if row["lease_owner"] == worker.owner and row["capture_started_at"]
        ]
        return len(calling) >= count

    return check


def test_jobs_in_hand_are_finished_before_the_loop_returns(desk: Desk) -> None:
    desk.faults("bugpilot", latency_ms=400)
    job_ids = [desk.enqueue(target=str(1001 + n), requester=EMAIL) for n in range(3)]
    worker = desk.worker(threads=4)

    with running(worker) as stop:
        wait_until(held(desk, worker, 3))
        stop.set()
        stopped = time.monotonic()
    assert time.monotonic() - stopped < 3

    assert [desk.job(job_id)["state"] for job_id in job_ids] == ["done"] * 3
    assert len(desk.captures()) == 3


def test_jobs_still_running_at_the_drain_timeout_are_released(desk: Desk) -> None:
    job_id = desk.enqueue(requester=EMAIL)
    bugpilot = Holds(desk.bugpilot_client(), "request_action")
    worker = desk.worker(bugpilot=bugpilot)

    with running(worker, drain_timeout=0.1) as stop:
        assert bugpilot.entered.wait(timeout=10)
        stop.set()
    # The loop returned while the Bugpilot answer was still on its way.

    released = desk.job(job_id)
    assert released["state"] == "pending"
    assert released["lease_owner"] is None
    assert released["capture_started_at"] is not None
    assert steps(released)[-1] == ("drain", "released")

    # The answer that arrives after the release is not recorded.
    bugpilot.release()
    wait_until(lambda: not worker._held)
    assert desk.job(job_id)["session_info_url"] is None

    [job] = desk.finish(desk.worker(), job_id)
    assert (job["state"], job["dead_reason"]) == ("dead", "capture_in_doubt")
    assert len(desk.captures()) == 1
    assert len(desk.bugpilot_calls()) == 1


def test_the_lease_is_kept_through_a_call_longer_than_the_lease(desk: Desk) -> None:
    job_id = desk.enqueue(requester=EMAIL)
    bugpilot = Holds(desk.bugpilot_client(), "request_action")
    worker = desk.worker(bugpilot=bugpilot, lease=0.6)

    with running(worker):
        assert bugpilot.entered.wait(timeout=10)
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            assert desk.store.claim("intruder", lease=0.6) == []
            time.sleep(0.05)
        bugpilot.release()
        wait_until(lambda: desk.job(job_id)["state"] == "done")

    assert len(desk.captures()) == 1
    assert len(desk.notes()) == 1


def test_more_jobs_than_threads_all_get_done(desk: Desk) -> None:
    job_ids = [desk.enqueue(target=str(2001 + n), requester=EMAIL) for n in range(12)]
    worker = desk.worker(threads=3)

    with running(worker):
        wait_until(
            lambda: all(desk.job(i)["state"] == "done" for i in job_ids), timeout=20
        )

    captures = desk.captures()
    assert len(captures) == 12
    descriptions = {call["userProvidedDescription"] for call in captures}
    assert len(descriptions) == 12


def test_a_lease_taken_over_by_another_worker_is_noticed_and_given_up(
    desk: Desk,
) -> None:
    job_id = desk.enqueue(requester=EMAIL)
    bugpilot = Holds(desk.bugpilot_client(), "request_action")
    worker = desk.worker(bugpilot=bugpilot, lease=0.3)

    with running(worker):
        assert bugpilot.entered.wait(timeout=10)
        with desk.store.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE jobs SET lease_owner = 'other', lease_until = ?",
                (time.time() + 60,),
            )
        wait_until(lambda: job_id in worker._given_up, timeout=5)
        bugpilot.release()
        wait_until(lambda: not worker._held)

    job = desk.job(job_id)
    assert (job["state"], job["lease_owner"]) == ("pending", "other")
    assert job["session_info_url"] is None
    assert desk.notes() == []

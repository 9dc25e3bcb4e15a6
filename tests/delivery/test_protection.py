"""Outbound protection seen from the worker: circuit breaker and rate limits."""

from __future__ import annotations

import time

from relay.config import Settings
from relay.model import Requester
from relay.outbound import CircuitBreaker, RateLimit
from relay.sandbox import sandbox_environment
from relay.worker import Backoff, build_bugpilot, build_helpdesks
from tests.delivery.support import Desk
from tests.harness import Clock

EMAIL = Requester(email="jane@example.com")


def test_the_breaker_stops_calls_to_a_failing_bugpilot_until_a_probe_succeeds(
    desk: Desk,
) -> None:
    bugpilot = desk.bugpilot_client()
    breaker = CircuitBreaker("bugpilot", threshold=5, reset_after=0.3)
    bugpilot.outbound.breaker = breaker
    worker = desk.worker(bugpilot=bugpilot, backoff=Backoff(base=0.01, cap=0.02))
    job_ids = [desk.enqueue(target=str(3001 + n), requester=EMAIL) for n in range(6)]
    desk.faults("bugpilot", fail_rate=1.0)

    # Five failed calls open the circuit; every later attempt stops at relay.
    worker.run_until_idle()
    assert breaker.is_open
    assert len(desk.bugpilot_calls()) == 5
    jobs = [desk.job(job_id) for job_id in job_ids]
    assert {job["state"] for job in jobs} == {"pending"}
    assert {job["last_error"] for job in jobs} == {"circuit_open"}
    assert all(job["next_attempt_at"] >= time.time() + 0.1 for job in jobs)

    # After reset_after one probe goes through; it fails and the circuit reopens.
    time.sleep(0.35)
    worker.run_until_idle()
    assert breaker.is_open
    assert len(desk.bugpilot_calls()) == 6

    # Bugpilot recovers: the next probe closes the circuit and the jobs go out.
    desk.sandbox.bugpilot.faults.clear()
    time.sleep(0.35)
    jobs = desk.finish(worker, *job_ids)
    assert not breaker.is_open
    assert [job["state"] for job in jobs] == ["done"] * 6
    assert len(desk.bugpilot_calls()) == 12
    assert len(desk.captures()) == 6


def test_the_bugpilot_rate_limit_spaces_the_calls_of_a_worker(desk: Desk) -> None:
    clock = Clock()
    bugpilot = desk.bugpilot_client()
    bugpilot.outbound.limit = RateLimit(6, clock=clock, sleep=clock.sleep)
    job_ids = [desk.enqueue(target=str(4001 + n), requester=EMAIL) for n in range(3)]

    jobs = desk.finish(desk.worker(bugpilot=bugpilot), *job_ids)

    assert [job["state"] for job in jobs] == ["done"] * 3
    assert clock.slept == [10.0, 10.0]  # six a minute: one call every ten seconds


def test_each_destination_gets_the_rate_limit_it_is_configured_with(
    desk: Desk,
) -> None:
    env = {
        **sandbox_environment(desk.sandbox),
        "BUGPILOT_RATE_LIMIT": "30",
        "ZENDESK_RATE_LIMIT": "120",
        "INTERCOM_RATE_LIMIT": "240",
    }
    settings = Settings.from_env(env)

    bugpilot = build_bugpilot(settings).outbound.limit
    helpdesks = build_helpdesks(settings)
    zendesk = helpdesks["zendesk"].outbound.limit  # type: ignore[attr-defined]
    intercom = helpdesks["intercom"].outbound.limit  # type: ignore[attr-defined]
    assert bugpilot is not None and bugpilot.rate == 30 / 60
    assert zendesk is not None and zendesk.rate == 120 / 60
    assert intercom is not None and intercom.rate == 240 / 60

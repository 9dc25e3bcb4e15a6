"""Delivery through faulty emulators, with real gunicorn and a real worker.

One deployment serves the module; each test resets the emulators, injects its
faults, tags fresh tickets and checks the jobs' final states against what the
emulators themselves recorded: one capture and one note per ticket.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from relay.sandbox import Sandbox
from relay.store import Store
from tests.delivery.deploy import (
    environment,
    ok_captures,
    open_store,
    tag_ticket,
    wait_finished,
    zendesk_notes,
)
from tests.deployment import Relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TICKETS = itertools.count(6001)
EVENTS = 8


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    tmp_path = tmp_path_factory.mktemp("faults")
    with Sandbox() as sandbox:
        relay = Relay(sandbox, tmp_path, environment(sandbox, tmp_path))
        relay.start_web()
        relay.start_worker()
        try:
            yield relay
        finally:
            relay.stop()


@pytest.fixture
def relay(deployment: Relay) -> Relay:
    deployment.sandbox.reset()
    return deployment


@pytest.fixture
def store(deployment: Relay) -> Iterator[Store]:
    store = open_store(deployment)
    yield store
    store.close()


def deliver(
    relay: Relay, store: Store, tag: str = "bugpilot_screenshot", count: int = EVENTS
) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """Tag ``count`` fresh tickets and wait for their jobs to end."""
    tickets = [str(next(TICKETS)) for _ in range(count)]
    job_ids = [tag_ticket(relay, ticket, tag) for ticket in tickets]
    return tickets, wait_finished(store, job_ids, relay)


def assert_one_capture_and_one_note_each(
    relay: Relay, tickets: list[str], jobs: dict[int, dict[str, Any]]
) -> None:
    assert [job["state"] for job in jobs.values()] == ["done"] * len(tickets)
    captures = ok_captures(relay.sandbox)
    assert sorted(captures.values()) == [1] * len(tickets)
    for ticket, job in zip(tickets, jobs.values(), strict=True):
        assert job["target_id"] == ticket
        assert zendesk_notes(relay.sandbox, ticket) == [
            f"Bugpilot screenshot: {job['session_info_url']}"
        ]


def injected(relay: Relay, emulator: str) -> dict[str, int]:
    counts: dict[str, int] = getattr(relay, emulator).faults()["injected"]
    return counts


def test_latency_slows_delivery_down_without_repeating_anything(
    relay: Relay, store: Store
) -> None:
    relay.bugpilot.set_faults(latency_ms=300, latency_jitter_ms=200)
    relay.zendesk.set_faults(latency_ms=100, latency_jitter_ms=100)
    tickets, jobs = deliver(relay, store)

    assert_one_capture_and_one_note_each(relay, tickets, jobs)
    assert len(relay.bugpilot.state()["actions"]) == EVENTS
    assert all(job["attempts"] == 1 for job in jobs.values())
    requests = relay.zendesk.state()["requests"]
    assert requests["PUT /api/v2/tickets/<int:ticket_id>"] == EVENTS


def test_500s_are_retried_until_delivered(relay: Relay, store: Store) -> None:
    # Four in a row stay under the breaker's threshold of five.
    relay.bugpilot.set_faults(fail_next=4)
    relay.zendesk.set_faults(fail_next=4)
    tickets, jobs = deliver(relay, store)

    assert_one_capture_and_one_note_each(relay, tickets, jobs)
    assert injected(relay, "bugpilot") == {"fail": 4}
    assert injected(relay, "zendesk") == {"fail": 4}
    statuses = relay.bugpilot.state()["action_counts"]["by_status"]
    assert statuses == {"500": 4, "200": EVENTS}


def test_429s_with_retry_after_are_waited_out(relay: Relay, store: Store) -> None:
    relay.bugpilot.set_faults(rate_limit_next=3, retry_after=1)
    relay.zendesk.set_faults(rate_limit_next=3, retry_after=1)
    tickets, jobs = deliver(relay, store)

    assert_one_capture_and_one_note_each(relay, tickets, jobs)
    assert injected(relay, "bugpilot") == {"rate_limit": 3}
    assert injected(relay, "zendesk") == {"rate_limit": 3}
    statuses = relay.bugpilot.state()["action_counts"]["by_status"]
    assert statuses == {"429": 3, "200": EVENTS}


def test_a_retry_after_too_long_for_one_attempt_is_waited_between_attempts(
    relay: Relay, store: Store
) -> None:
    relay.bugpilot.set_faults(rate_limit_next=1, retry_after=7)
    tickets, jobs = deliver(relay, store, count=1)

    assert_one_capture_and_one_note_each(relay, tickets, jobs)
    [job] = jobs.values()
    first, *rest = job["history"]
    assert (first["step"], first["outcome"], first["http_status"]) == (
        "capture",
        "retry",
        429,
    )
    assert job["attempts"] == 2
    assert rest[0]["at"] - first["at"] >= 7


def test_connection_resets_are_retried_until_delivered(
    relay: Relay, store: Store
) -> None:
    relay.bugpilot.set_faults(reset_next=4)
    relay.zendesk.set_faults(reset_next=4)
    tickets, jobs = deliver(relay, store)

    assert_one_capture_and_one_note_each(relay, tickets, jobs)
    assert injected(relay, "bugpilot") == {"reset": 4}
    assert injected(relay, "zendesk") == {"reset": 4}


def test_a_user_offline_for_the_first_calls_is_waited_for(
    relay: Relay, store: Store
) -> None:
    relay.bugpilot.set_faults(offline_next=6)
    tickets, jobs = deliver(relay, store, tag="bugpilot_patient", count=4)

    assert [job["state"] for job in jobs.values()] == ["done"] * 4
    assert injected(relay, "bugpilot") == {"offline": 6}
    counts = relay.bugpilot.state()["action_counts"]
    assert counts["by_error"] == {"USER_NOT_CONNECTED": 6}
    assert counts["ok"] == 4
    assert sorted(ok_captures(relay.sandbox).values()) == [1] * 4
    for ticket, job in zip(tickets, jobs.values(), strict=True):
        assert zendesk_notes(relay.sandbox, ticket) == [
            f"Bugpilot session: {job['session_info_url']}"
        ]
    waited = [job for job in jobs.values() if job["attempts"] > 1]
    assert waited
    assert all(job["history"][0]["outcome"] == "offline" for job in waited)

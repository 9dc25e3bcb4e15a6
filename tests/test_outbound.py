"""The shared outbound side: Retry-After, breaker, rate limit, classification."""

from __future__ import annotations

import email.utils

import pytest
import requests
import responses

from relay.errors import PermanentError, RateLimited, TransientError
from relay.outbound import (
    RETRY_AFTER_CAP,
    CircuitBreaker,
    Outbound,
    RateLimit,
    parse_retry_after,
)
from tests.harness import Clock


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("7") == 7
    when = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == pytest.approx(60)
    assert parse_retry_after("999999") == RETRY_AFTER_CAP
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0


def test_the_breaker_opens_after_failures_and_closes_after_a_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("zendesk", threshold=3, reset_after=30, clock=clock)
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()
    with pytest.raises(TransientError) as caught:
        breaker.before_call()
    assert caught.value.reason == "circuit_open"

    clock.now += 31
    breaker.before_call()  # the probe passes
    with pytest.raises(TransientError):
        breaker.before_call()  # only one probe at a time
    breaker.record_success()
    assert not breaker.is_open
    breaker.before_call()


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("bugpilot", threshold=1, reset_after=10, clock=clock)
    breaker.record_failure()
    clock.now += 11
    breaker.before_call()
    breaker.record_failure()
    with pytest.raises(TransientError):
        breaker.before_call()


def test_the_rate_limit_spaces_calls_out() -> None:
    clock = Clock()
    limit = RateLimit(60, clock=clock, sleep=clock.sleep)  # one a second
    for _ in range(int(limit.capacity) + 5):
        limit.acquire()
    assert sum(clock.slept) == pytest.approx(5, abs=0.01)


@responses.activate
def test_transient_answers_are_retried_inside_the_attempt() -> None:
    clock = Clock()
    url = "https://helpdesk.test/api"
    responses.get(url, status=502)
    responses.get(url, status=429, headers={"Retry-After": "2"})
    responses.get(url, json={"ok": True})
    client = Outbound("zendesk", "https://helpdesk.test", sleep=clock.sleep)
    assert client.request("GET", "/api").json() == {"ok": True}
    assert clock.slept[1] == 2


@responses.activate
def test_a_long_retry_after_is_left_to_the_next_attempt() -> None:
    clock = Clock()
    responses.get("https://helpdesk.test/x", status=429, headers={"Retry-After": "93"})
    client = Outbound("zendesk", "https://helpdesk.test", sleep=clock.sleep)
    with pytest.raises(RateLimited) as caught:
        client.request("GET", "/x")
    assert caught.value.retry_after == 93
    assert clock.slept == []
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("status", [401, 403, 404, 422])
def test_permanent_statuses_are_not_retried(status: int) -> None:
    responses.put(
        "https://helpdesk.test/t",
        status=status,
        json={"error": "RecordNotFound", "description": "Not found"},
    )
    client = Outbound("zendesk", "https://helpdesk.test", sleep=lambda _s: None)
    with pytest.raises(PermanentError) as caught:
        client.request("PUT", "/t", json={})
    assert caught.value.http_status == status
    assert caught.value.error_code == "RecordNotFound"
    assert len(responses.calls) == 1


@responses.activate
def test_connection_errors_are_transient_and_counted_by_the_breaker() -> None:
    responses.get("https://helpdesk.test/y", body=requests.ConnectionError("reset"))
    breaker = CircuitBreaker("intercom", threshold=3)
    client = Outbound(
        "intercom", "https://helpdesk.test", breaker=breaker, sleep=lambda _s: None
    )
    with pytest.raises(TransientError) as caught:
        client.request("GET", "/y")
    assert caught.value.reason == "connection_error"
    assert breaker.is_open

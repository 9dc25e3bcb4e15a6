"""Fault injection: the Faults object alone, then each fault over real HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import requests

from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_TOKEN,
    Sandbox,
    SandboxControl,
)
from relay.sandbox.faults import Faults

# -- the Faults object ----------------------------------------------------------


def kinds(faults: Faults, calls: int) -> list[str | None]:
    return [faults.draw().kind for _ in range(calls)]


def test_no_faults_by_default() -> None:
    faults = Faults()

    assert kinds(faults, 5) == [None] * 5
    assert faults.draw().delay == 0.0


def test_counted_faults_are_used_up_reset_first() -> None:
    faults = Faults()
    faults.configure({"fail_next": 1, "rate_limit_next": 2, "reset_next": 1})

    assert kinds(faults, 5) == ["reset", "rate_limit", "rate_limit", "fail", None]
    assert faults.snapshot()["injected"] == {"reset": 1, "rate_limit": 2, "fail": 1}


def test_rates_with_a_seed_repeat() -> None:
    first, second = Faults(), Faults()
    settings = {"fail_rate": 0.3, "rate_limit_rate": 0.2, "reset_rate": 0.1, "seed": 7}
    first.configure(settings)
    second.configure(settings)

    drawn = kinds(first, 200)

    assert drawn == kinds(second, 200)
    assert {"fail", "rate_limit", "reset", None} == set(drawn)
    assert 40 <= drawn.count("fail") <= 80


def test_a_rate_of_one_always_faults() -> None:
    faults = Faults()
    faults.configure({"reset_rate": 1})

    assert kinds(faults, 10) == ["reset"] * 10


def test_latency_and_jitter_make_the_delay() -> None:
    faults = Faults()
    faults.configure({"latency_ms": 100, "latency_jitter_ms": 50})

    delays = [faults.draw().delay for _ in range(50)]

    assert all(0.1 <= delay <= 0.15 for delay in delays)
    assert len(set(delays)) > 1


def test_configure_merges_and_clear_turns_off() -> None:
    faults = Faults()
    faults.configure({"fail_next": 2})
    faults.configure({"fail_status": 503})

    assert faults.snapshot()["settings"]["fail_next"] == 2
    assert faults.fail_status == 503
    faults.clear()
    assert kinds(faults, 3) == [None] * 3
    assert faults.fail_status == 500


@pytest.mark.parametrize(
    "settings",
    [
        {"fail_nxt": 1},
        {"fail_next": -1},
        {"fail_next": 1.5},
        {"fail_next": True},
        {"fail_rate": 1.5},
        {"fail_rate": "0.5"},
        {"fail_rate": 0.6, "reset_rate": 0.6},
        {"fail_status": 200},
        {"latency_ms": -5},
        {"seed": "x"},
        {"offline_next": 1},
    ],
)
def test_bad_settings_are_refused_and_change_nothing(
    settings: dict[str, object],
) -> None:
    faults = Faults()

    with pytest.raises(ValueError):
        faults.configure(settings)

    assert kinds(faults, 2) == [None, None]


def test_offline_next_is_counted_down() -> None:
    faults = Faults(offline=True)
    faults.configure({"offline_next": 2})

    assert [faults.take_offline() for _ in range(3)] == [True, True, False]
    assert faults.snapshot()["injected"] == {"offline": 2}


# -- over HTTP ------------------------------------------------------------------

Call = Callable[[Sandbox], requests.Response]


def bugpilot_action(sandbox: Sandbox) -> requests.Response:
    return requests.post(
        f"{sandbox.bugpilot_url}/api/v1/action",
        json={
            "workspaceId": SANDBOX_WORKSPACE_ID,
            "userId": "user-123",
            "action": "upload-session",
        },
        headers={
            "User-Agent": "Bugpilot API Client/1.0",
            "X-Bugpilot-Api-Key": SANDBOX_BUGPILOT_API_KEY,
        },
        timeout=5,
    )


def zendesk_note(sandbox: Sandbox) -> requests.Response:
    return requests.put(
        f"{sandbox.zendesk_url}/api/v2/tickets/35436",
        json={"ticket": {"comment": {"body": "note", "public": False}}},
        headers={"Authorization": f"Bearer {SANDBOX_ZENDESK_TOKEN}"},
        timeout=5,
    )


def intercom_note(sandbox: Sandbox) -> requests.Response:
    return requests.post(
        f"{sandbox.intercom_url}/conversations/524/reply",
        json={
            "message_type": "note",
            "type": "admin",
            "admin_id": SANDBOX_INTERCOM_ADMIN_ID,
            "body": "note",
        },
        headers={"Authorization": f"Bearer {SANDBOX_INTERCOM_TOKEN}"},
        timeout=5,
    )


EMULATORS = {
    "bugpilot": bugpilot_action,
    "zendesk": zendesk_note,
    "intercom": intercom_note,
}


def base_url(sandbox: Sandbox, name: str) -> str:
    return str(getattr(sandbox, f"{name}_url"))


def error_of(name: str, response: requests.Response) -> str:
    """The error code in each API's own error shape."""
    if name == "zendesk" and response.status_code == 429:
        return response.text
    body = response.json()
    if name == "intercom":
        return str(body["errors"][0]["code"])
    return str(body["error"])


@pytest.fixture(params=sorted(EMULATORS))
def emulator(
    request: pytest.FixtureRequest, sandbox: Sandbox
) -> tuple[str, Call, SandboxControl]:
    name = request.param
    return name, EMULATORS[name], SandboxControl(base_url(sandbox, name))


def test_fail_next_answers_with_the_api_error_shape(
    sandbox: Sandbox, emulator: tuple[str, Call, SandboxControl]
) -> None:
    name, call, ctl = emulator
    ctl.set_faults(fail_next=2)

    responses = [call(sandbox) for _ in range(3)]

    assert [response.status_code for response in responses] == [500, 500, 200]
    expected = {
        "bugpilot": "INTERNAL_ERROR",
        "zendesk": "InternalError",
        "intercom": "server_error",
    }
    assert error_of(name, responses[0]) == expected[name]
    assert ctl.faults()["injected"] == {"fail": 2}


def test_fail_status_chooses_the_status(
    sandbox: Sandbox, emulator: tuple[str, Call, SandboxControl]
) -> None:
    _, call, ctl = emulator
    ctl.set_faults(fail_next=1, fail_status=503)

    assert call(sandbox).status_code == 503


def test_rate_limit_next_answers_429_with_retry_after(
    sandbox: Sandbox, emulator: tuple[str, Call, SandboxControl]
) -> None:
    name, call, ctl = emulator
    ctl.set_faults(rate_limit_next=1, retry_after=7)

    limited, passed = call(sandbox), call(sandbox)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert passed.status_code == 200
    expected = {
        "bugpilot": "RATE_LIMITED",
        "zendesk": "Rate limit for ticket updates exceeded, "
        "please wait before updating this ticket again",
        "intercom": "rate_limit_exceeded",
    }
    assert error_of(name, limited) == expected[name]


def test_rate_limit_retry_after_defaults_to_one_second(sandbox: Sandbox) -> None:
    SandboxControl(sandbox.intercom_url).set_faults(rate_limit_next=1)

    assert intercom_note(sandbox).headers["Retry-After"] == "1"


def test_reset_next_drops_the_connection_without_an_answer(
    sandbox: Sandbox,
    emulator: tuple[str, Call, SandboxControl],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, call, ctl = emulator
    ctl.set_faults(reset_next=2)

    with caplog.at_level(logging.INFO):
        for _ in range(2):
            with pytest.raises(requests.ConnectionError):
                call(sandbox)
        assert call(sandbox).status_code == 200

    assert ctl.faults()["injected"] == {"reset": 2}
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_reset_call_is_not_carried_out(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.zendesk_url)
    ctl.set_faults(reset_next=1)

    with pytest.raises(requests.ConnectionError):
        zendesk_note(sandbox)

    assert ctl.state()["tickets"]["35436"]["comments"] == []


def test_latency_delays_every_api_answer(
    sandbox: Sandbox, emulator: tuple[str, Call, SandboxControl]
) -> None:
    _, call, ctl = emulator
    ctl.set_faults(latency_ms=150)

    started = time.monotonic()
    response = call(sandbox)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.15


def test_the_same_seed_gives_the_same_statuses_over_http(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.zendesk_url)

    def run() -> list[int]:
        ctl.set_faults(fail_rate=0.3, rate_limit_rate=0.2, seed=11)
        return [zendesk_note(sandbox).status_code for _ in range(30)]

    first = run()

    assert first == run()
    assert {200, 429, 500} == set(first)


def test_faults_never_touch_control_endpoints(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.bugpilot_url)
    ctl.set_faults(fail_next=3, reset_next=3, latency_ms=2000)

    started = time.monotonic()
    state = ctl.state()

    assert time.monotonic() - started < 1.0
    assert state["faults"]["injected"] == {}
    assert state["requests"] == {}


def test_a_faulted_bugpilot_call_is_recorded(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.bugpilot_url)
    ctl.set_faults(fail_next=1, rate_limit_next=1, reset_next=1)

    with pytest.raises(requests.ConnectionError):
        bugpilot_action(sandbox)
    bugpilot_action(sandbox)
    bugpilot_action(sandbox)
    bugpilot_action(sandbox)

    actions = ctl.state()["actions"]
    assert [(a["fault"], a["status"], a["error"]) for a in actions] == [
        ("reset", None, None),
        ("rate_limit", 429, "RATE_LIMITED"),
        ("fail", 500, "INTERNAL_ERROR"),
        (None, 200, None),
    ]
    assert all(a["userId"] == "user-123" for a in actions)


def test_faults_are_set_read_and_cleared_over_http(sandbox: Sandbox) -> None:
    url = f"{sandbox.intercom_url}/_sandbox/faults"

    bad = requests.post(url, json={"latency": 5}, timeout=5)
    not_object = requests.post(url, json=[1], timeout=5)
    good = requests.post(url, json={"fail_next": 4}, timeout=5)
    cleared = requests.delete(url, timeout=5)

    assert bad.status_code == not_object.status_code == 400
    assert "latency" in bad.json()["error"]
    assert good.json()["settings"]["fail_next"] == 4
    assert cleared.json()["settings"]["fail_next"] == 0
    assert intercom_note(sandbox).status_code == 200


def test_reset_clears_faults(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.zendesk_url)
    ctl.set_faults(fail_next=5)

    ctl.reset()

    assert zendesk_note(sandbox).status_code == 200

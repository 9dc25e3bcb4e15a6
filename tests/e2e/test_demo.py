"""``relay demo`` ends with a sessionInfoUrl note on both emulated helpdesks."""

from __future__ import annotations

import io

from relay.demo import run_demo
from tests.e2e.conftest import Relay


def test_the_demo_prints_each_step_and_ends_with_both_notes(running: Relay) -> None:
    out = io.StringIO()
    code = run_demo(running.url, running.env, out=out)
    text = out.getvalue()
    assert code == 0, text + running.logs()
    assert text.rstrip().endswith("demo complete")
    assert text.count("<- 202") == 2
    notes = [line for line in text.splitlines() if "/api/v1/session-info/" in line]
    assert any("[private]" in line for line in notes), text
    assert any("[note]" in line for line in notes), text


def test_the_demo_says_when_relay_is_not_running(relay: Relay) -> None:
    out = io.StringIO()
    assert run_demo("http://127.0.0.1:9", relay.env, out=out) == 1
    assert "make run" in out.getvalue()

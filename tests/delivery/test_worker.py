"""The worker against the emulators: steps, retries, offline users, reports.

Each test drives ``Worker.process`` through ``run_until_idle`` on a SQLite store,
with tiny backoff and the clients' in-attempt sleeps recorded, not slept.
"""

from __future__ import annotations

import email.utils
import time

import pytest
import responses

from relay.model import Requester
from relay.outbound import RETRY_AFTER_CAP
from relay.rules import DEFAULT_OFFLINE_NOTE
from relay.worker import Backoff
from tests.delivery.support import (
    Desk,
    Dies,
    Killed,
    Stalls,
    containing,
    make_rule,
    steps,
)

# -- the happy paths ------------------------------------------------------------


def test_a_zendesk_job_is_one_capture_and_one_private_note(desk: Desk) -> None:
    job_id = desk.enqueue()
    [job] = desk.finish(desk.worker(), job_id)

    assert job["state"] == "done"
    [capture] = desk.captures()
    assert capture["userId"] == "jane@example.com"
    assert capture["userProvidedDescription"] == "Ticket 1001: Cannot log in"
    assert job["session_info_url"] == capture["sessionInfoUrl"]
    assert job["user_id"] == "jane@example.com"
    assert job["capture_started_at"] is None
    assert desk.notes() == [f"Bugpilot screenshot: {job['session_info_url']}"]
    assert "bugpilot_screenshot" not in desk.tags()
    assert steps(job) == [("capture", "ok"), ("note", "ok")]
    assert all(item["duration_ms"] is not None for item in job["history"])


def test_an_intercom_job_writes_an_admin_note_on_the_conversation(
    desk: Desk,
) -> None:
    job_id = desk.enqueue(provider="intercom", target="777")
    [job] = desk.finish(desk.worker(), job_id)

    assert job["state"] == "done"
    assert [c["userId"] for c in desk.captures()] == ["joe@example.com"]
    [note] = desk.notes("intercom", "777")
    assert job["session_info_url"] in note
    conversation = desk.sandbox.intercom.state()["conversations"]["777"]
    assert conversation["tags"]["tags"] == []


# -- crash safety ---------------------------------------------------------------


def test_a_worker_killed_during_the_customer_lookup_leaves_no_doubt(
    desk: Desk,
) -> None:
    job_id = desk.enqueue()
    dying = desk.worker(
        zendesk=Dies(desk.zendesk_client(), "lookup_requester", after=False)
    )
    with pytest.raises(Killed):
        dying.run_until_idle()
    assert desk.job(job_id)["capture_started_at"] is None

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "done"
    assert len(desk.captures()) == 1


def test_a_worker_killed_during_the_bugpilot_call_is_never_sent_again(
    desk: Desk,
) -> None:
    job_id = desk.enqueue()
    dying = desk.worker(
        bugpilot=Dies(desk.bugpilot_client(), "request_action", after=True)
    )
    with pytest.raises(Killed):
        dying.run_until_idle()
    assert desk.job(job_id)["capture_started_at"] is not None

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "dead"
    assert job["dead_reason"] == "capture_in_doubt"
    assert len(desk.bugpilot_calls()) == 1
    [note] = desk.notes()
    assert "will not ask twice" in note
    assert "bugpilot_screenshot again" in note


def test_a_note_written_by_a_worker_that_died_is_not_written_twice(
    desk: Desk,
) -> None:
    job_id = desk.enqueue()
    dying = desk.worker(zendesk=Dies(desk.zendesk_client(), "write_note", after=True))
    with pytest.raises(Killed):
        dying.run_until_idle()
    stored = desk.job(job_id)
    assert stored["state"] == "noting"
    assert stored["session_info_url"] is not None

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "done"
    assert len(desk.captures()) == 1
    assert len(containing(desk.notes(), job["session_info_url"])) == 1
    assert desk.requests("zendesk")["GET /api/v2/tickets/<int:ticket_id>/comments"]


def test_a_note_cut_off_before_it_reached_the_helpdesk_is_written_later(
    desk: Desk,
) -> None:
    job_id = desk.enqueue()
    dying = desk.worker(zendesk=Dies(desk.zendesk_client(), "write_note", after=False))
    with pytest.raises(Killed):
        dying.run_until_idle()

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "done"
    assert len(desk.captures()) == 1
    assert len(containing(desk.notes(), job["session_info_url"])) == 1


def test_a_failure_note_interrupted_by_a_kill_is_not_written_twice(
    desk: Desk,
) -> None:
    desk.sandbox.bugpilot.set_users(
        online=[], offline=["jane@example.com"], all_online=None
    )
    job_id = desk.enqueue()
    dying = desk.worker(zendesk=Dies(desk.zendesk_client(), "write_note", after=True))
    with pytest.raises(Killed):
        dying.run_until_idle()
    stored = desk.job(job_id)
    assert (stored["state"], stored["dead_reason"]) == ("pending", "user_not_connected")

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert (job["state"], job["dead_reason"]) == ("dead", "user_not_connected")
    assert job["noted_at"] is None
    assert len(desk.notes()) == 1
    assert len(desk.bugpilot_calls()) == 1


def test_a_stalled_worker_whose_job_was_taken_over_records_and_writes_nothing(
    desk: Desk,
) -> None:
    job_id = desk.enqueue()
    other = desk.worker()

    def taken_over() -> None:
        desk.expire_leases()
        other.run_until_idle()

    stalled = desk.worker(
        bugpilot=Stalls(desk.bugpilot_client(), "request_action", taken_over)
    )
    stalled.run_until_idle()

    job = desk.job(job_id)
    assert (job["state"], job["dead_reason"]) == ("dead", "capture_in_doubt")
    assert job["session_info_url"] is None
    assert len(desk.captures()) == 1
    [note] = desk.notes()
    assert "will not ask twice" in note


def test_a_stalled_worker_does_not_write_a_note_the_new_holder_wrote(
    desk: Desk,
) -> None:
    job_id = desk.enqueue(requester=Requester(email="jane@example.com"))
    desk.faults("zendesk", fail_next=3)  # the first note attempt fails
    desk.worker(backoff=Backoff(base=60)).run_until_idle()
    assert desk.job(job_id)["state"] == "noting"
    desk.make_due()

    other = desk.worker()

    def taken_over() -> None:
        desk.expire_leases()
        other.run_until_idle()

    stalled = desk.worker(
        zendesk=Stalls(desk.zendesk_client(), "note_exists", taken_over)
    )
    stalled.run_until_idle()

    job = desk.job(job_id)
    assert job["state"] == "done"
    assert len(containing(desk.notes(), job["session_info_url"])) == 1
    assert len(desk.captures()) == 1


def test_a_job_that_crashes_is_rescheduled_with_its_capture_state_kept(
    desk: Desk,
) -> None:
    class Broken:
        provider = "zendesk"

        def lookup_requester(self, requester: Requester) -> Requester:
            raise RuntimeError("bug")

    job_id = desk.enqueue()
    worker = desk.worker(zendesk=Broken())
    [job] = desk.store.claim(worker.owner, limit=1)
    worker._run_one(job)

    stored = desk.job(job_id)
    assert stored["state"] == "pending"
    assert stored["lease_owner"] is None
    assert stored["last_error"] == "internal_error"
    assert steps(stored) == [("pending", "error")]


# -- retries --------------------------------------------------------------------


def test_bugpilot_500s_are_retried_inside_one_attempt(desk: Desk) -> None:
    desk.faults("bugpilot", fail_next=2)
    job_id = desk.enqueue()
    [job] = desk.finish(desk.worker(), job_id)

    assert job["state"] == "done"
    assert job["attempts"] == 1
    statuses = [call["status"] for call in desk.bugpilot_calls()]
    assert statuses == [500, 500, 200]
    assert len(desk.sleeps) == 2 and all(0 < s <= 2.25 for s in desk.sleeps)


def test_a_failed_attempt_waits_a_jittered_exponential_backoff(desk: Desk) -> None:
    desk.faults("bugpilot", fail_next=3)
    job_id = desk.enqueue()
    worker = desk.worker(backoff=Backoff(base=60, cap=600))
    before = time.time()
    worker.run_until_idle()

    job = desk.job(job_id)
    assert job["state"] == "pending"
    assert job["capture_started_at"] is None
    assert 30 - 1 <= job["next_attempt_at"] - before <= 60 + 1
    [attempt] = job["history"]
    assert (attempt["step"], attempt["outcome"]) == ("capture", "retry")
    assert (attempt["http_status"], attempt["error_code"]) == (500, "INTERNAL_ERROR")
    assert Backoff(base=1, cap=8).delay(10) <= 8
    assert 4 <= Backoff(base=1, cap=100).delay(4) <= 8


@pytest.mark.parametrize("emulator", ["bugpilot", "zendesk", "intercom"])
def test_a_long_retry_after_is_honoured_between_attempts(
    desk: Desk, emulator: str
) -> None:
    provider = "intercom" if emulator == "intercom" else "zendesk"
    requester = Requester(email="jane@example.com")
    if provider == "intercom":
        requester = Requester(email="joe@example.com")
    job_id = desk.enqueue(provider=provider, requester=requester)
    desk.faults(emulator, rate_limit_next=1, retry_after=120)
    before = time.time()
    desk.worker().run_until_idle()

    job = desk.job(job_id)
    assert job["state"] == ("pending" if emulator == "bugpilot" else "noting")
    assert 120 <= job["next_attempt_at"] - before <= 125
    assert job["history"][-1]["http_status"] == 429
    assert desk.sleeps == []  # too long to wait inside the attempt


def test_a_short_retry_after_is_waited_inside_the_attempt(desk: Desk) -> None:
    desk.faults("bugpilot", rate_limit_next=1, retry_after=2)
    [job] = desk.finish(desk.worker(), desk.enqueue())
    assert job["state"] == "done"
    assert desk.sleeps == [2.0]


def test_a_retry_after_date_is_honoured_and_capped(desk: Desk) -> None:
    api = "https://bugpilot.test"
    soon = email.utils.formatdate(time.time() + 300, usegmt=True)
    never = email.utils.formatdate(time.time() + 30 * 86400, usegmt=True)
    job_ids = [desk.enqueue(target="1001"), desk.enqueue(target="1002")]
    with responses.RequestsMock() as mock:
        mock.add_passthru(desk.sandbox.zendesk_url)
        for when in (soon, never):
            mock.post(
                f"{api}/api/v1/action",
                status=429,
                json={"error": "RATE_LIMITED"},
                headers={"Retry-After": when},
            )
        before = time.time()
        desk.worker(bugpilot=desk.bugpilot_client(api_url=api)).run_until_idle()

    first, second = (desk.job(job_id) for job_id in job_ids)
    assert 295 <= first["next_attempt_at"] - before <= 305
    assert second["next_attempt_at"] - before >= RETRY_AFTER_CAP - 5
    assert second["next_attempt_at"] - before <= RETRY_AFTER_CAP + 5


def test_a_job_past_its_budget_is_dead_without_a_call(desk: Desk) -> None:
    job_id = desk.enqueue(created_at=time.time() - 2 * 86400)
    [job] = desk.finish(desk.worker(), job_id)

    assert (job["state"], job["dead_reason"]) == ("dead", "retry_budget_exhausted")
    assert desk.bugpilot_calls() == []
    [note] = desk.notes()
    assert "retry budget exhausted" in note


def test_a_retry_that_would_end_past_the_budget_makes_the_job_dead(
    desk: Desk,
) -> None:
    desk.faults("bugpilot", rate_limit_next=1, retry_after=600)
    job_id = desk.enqueue()
    [job] = desk.finish(desk.worker(max_job_age=300), job_id)

    assert (job["state"], job["dead_reason"]) == ("dead", "retry_budget_exhausted")
    assert len(desk.bugpilot_calls()) == 1
    assert job["history"][-1]["http_status"] == 429


@pytest.mark.parametrize(
    ("settings", "rule", "reason"),
    [
        ({"workspace_id": ""}, {}, "missing_fields"),
        ({}, {"action": "upload-everything"}, "invalid_action"),
        ({"workspace_id": "ws_other"}, {}, "no_access"),
        ({"api_key": "wrong"}, {}, "unauthorized"),
    ],
)
def test_a_permanent_bugpilot_error_makes_the_job_dead_at_once(
    desk: Desk, settings: dict, rule: dict, reason: str
) -> None:
    job_id = desk.enqueue(make_rule(**rule))
    worker = desk.worker(bugpilot=desk.bugpilot_client(**settings))
    [job] = desk.finish(worker, job_id)

    assert (job["state"], job["dead_reason"]) == ("dead", reason)
    assert job["attempts"] == 1
    assert len(desk.bugpilot_calls()) == 1
    assert desk.sleeps == []
    [note] = desk.notes()
    assert reason.replace("_", " ") in note
    assert steps(job) == [("capture", "dead")]


@pytest.mark.parametrize("status", [401, 403, 404, 422])
def test_a_helpdesk_refusing_the_note_makes_the_job_dead_and_replay_does_not_recapture(
    desk: Desk, status: int
) -> None:
    job_id = desk.enqueue(requester=Requester(email="jane@example.com"))
    desk.faults("zendesk", fail_next=1, fail_status=status)
    [job] = desk.finish(desk.worker(), job_id)

    assert (job["state"], job["dead_reason"]) == ("dead", f"zendesk_http_{status}")
    assert job["history"][-1]["http_status"] == status
    assert desk.notes() == []
    assert len(desk.captures()) == 1

    assert desk.store.retry([job_id]) == {job_id: "retried"}
    assert desk.job(job_id)["state"] == "noting"
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "done"
    assert len(desk.captures()) == 1
    assert len(containing(desk.notes(), job["session_info_url"])) == 1


def test_wrong_helpdesk_credentials_make_the_job_dead(desk: Desk) -> None:
    job_id = desk.enqueue()
    [job] = desk.finish(desk.worker(zendesk=desk.zendesk_client(token="no")), job_id)
    assert (job["state"], job["dead_reason"]) == ("dead", "zendesk_http_401")
    assert desk.bugpilot_calls() == []


# -- offline users ----------------------------------------------------------------


def test_an_offline_user_gives_up_at_once_by_default(desk: Desk) -> None:
    desk.faults("bugpilot", offline_next=1)
    [job] = desk.finish(desk.worker(), desk.enqueue())

    assert (job["state"], job["dead_reason"]) == ("dead", "user_not_connected")
    assert len(desk.bugpilot_calls()) == 1
    assert desk.captures() == []
    expected = DEFAULT_OFFLINE_NOTE.format(
        action="upload-screenshot", tag="bugpilot_screenshot"
    )
    assert desk.notes() == [expected]
    assert steps(job) == [("capture", "dead")]
    assert job["history"][0]["error_code"] == "USER_NOT_CONNECTED"


def test_an_offline_user_is_retried_while_the_rule_waits(desk: Desk) -> None:
    desk.faults("bugpilot", offline_next=3)
    rule = make_rule(wait_for_user=30.0)
    [job] = desk.finish(desk.worker(), desk.enqueue(rule))

    assert job["state"] == "done"
    assert [call["error"] for call in desk.bugpilot_calls()] == [
        "USER_NOT_CONNECTED",
        "USER_NOT_CONNECTED",
        "USER_NOT_CONNECTED",
        None,
    ]
    assert steps(job)[:3] == [("capture", "offline")] * 3
    assert desk.notes() == [f"Bugpilot screenshot: {job['session_info_url']}"]


def test_an_offline_user_gets_the_offline_note_when_the_wait_runs_out(
    desk: Desk,
) -> None:
    desk.sandbox.bugpilot.set_users(
        online=[], offline=["jane@example.com"], all_online=None
    )
    rule = make_rule(wait_for_user=0.3, offline_note="{user_id} offline for {tag}")
    started = time.monotonic()
    [job] = desk.finish(desk.worker(), desk.enqueue(rule))

    assert time.monotonic() - started >= 0.3
    assert (job["state"], job["dead_reason"]) == ("dead", "user_not_connected")
    assert len(desk.bugpilot_calls()) >= 2
    assert desk.captures() == []
    assert desk.notes() == ["jane@example.com offline for bugpilot_screenshot"]


# -- report follow-up -------------------------------------------------------------


def test_the_report_is_polled_until_it_appears_then_noted(desk: Desk) -> None:
    desk.sandbox.bugpilot.change_settings({"report_after_polls": 2})
    rule = make_rule(follow_report=True, report_note="Report: {report_url}")
    [job] = desk.finish(desk.worker(), desk.enqueue(rule))

    assert job["state"] == "done"
    assert job["report_url"].startswith("https://dash.bugpilot.io/report/r1-")
    assert desk.notes() == [
        f"Bugpilot screenshot: {job['session_info_url']}",
        f"Report: {job['report_url']}",
    ]
    assert desk.sandbox.bugpilot.state()["polls"]["total"] == 3
    assert steps(job) == [
        ("capture", "ok"),
        ("note", "ok"),
        ("report", "waiting"),
        ("report", "waiting"),
        ("report", "ok"),
    ]
    assert all(item["http_status"] is None for item in job["history"])


def test_a_report_that_never_comes_ends_the_job_done_with_one_note(
    desk: Desk,
) -> None:
    desk.sandbox.bugpilot.change_settings({"report_after_polls": 10_000})
    rule = make_rule(follow_report=True)
    [job] = desk.finish(desk.worker(report_budget=0.2), desk.enqueue(rule))

    assert job["state"] == "done"
    assert job["report_url"] is None
    assert steps(job)[-1] == ("report", "no_report")
    assert len(desk.notes()) == 1


def test_a_report_note_interrupted_by_a_kill_is_not_written_twice(
    desk: Desk,
) -> None:
    rule = make_rule(follow_report=True, report_note="Report: {report_url}")
    job_id = desk.enqueue(rule)
    desk.worker(backoff=Backoff(base=60)).run_until_idle()  # capture and note
    assert desk.job(job_id)["noted_at"] is not None
    desk.make_due()
    dying = desk.worker(zendesk=Dies(desk.zendesk_client(), "write_note", after=True))
    with pytest.raises(Killed):
        desk.finish(dying, job_id)

    desk.expire_leases()
    [job] = desk.finish(desk.worker(), job_id)
    assert job["state"] == "done"
    assert len(containing(desk.notes(), "Report: ")) == 1
    assert len(desk.notes()) == 2


def test_a_session_url_off_the_bugpilot_host_is_never_fetched(desk: Desk) -> None:
    api = "https://bugpilot.test"
    foreign = f"{desk.sandbox.zendesk_url}/api/v1/session-info/ws/steal"
    rule = make_rule(follow_report=True)
    job_id = desk.enqueue(rule)
    with responses.RequestsMock() as mock:
        mock.add_passthru(desk.sandbox.zendesk_url)
        mock.post(f"{api}/api/v1/action", json={"ok": True, "sessionInfoUrl": foreign})
        worker = desk.worker(bugpilot=desk.bugpilot_client(api_url=api))
        [job] = desk.finish(worker, job_id)
        assert len(mock.calls) == 1

    assert (job["state"], job["dead_reason"]) == ("dead", "foreign_session_url")
    called = desk.requests("zendesk")
    assert all(" /api/v2/" in key for key in called), called

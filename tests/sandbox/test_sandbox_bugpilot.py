"""The Bugpilot emulator over real HTTP: auth, error codes, sessions, records."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_WORKSPACE_ID,
    Sandbox,
    SandboxControl,
)

HEADERS = {
    "User-Agent": "Bugpilot API Client/1.0",
    "X-Bugpilot-Api-Key": SANDBOX_BUGPILOT_API_KEY,
}


def action(
    sandbox: Sandbox, *, headers: dict[str, str] = HEADERS, **changes: Any
) -> requests.Response:
    body = {
        "workspaceId": SANDBOX_WORKSPACE_ID,
        "userId": "user-123",
        "action": "upload-screenshot",
        "userProvidedDescription": "Zendesk ticket 35436",
    }
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    return requests.post(
        f"{sandbox.bugpilot_url}/api/v1/action", json=body, headers=headers, timeout=5
    )


def control(sandbox: Sandbox) -> SandboxControl:
    return SandboxControl(sandbox.bugpilot_url)


def test_action_answers_with_a_session_url_on_the_emulator(sandbox: Sandbox) -> None:
    response = action(sandbox)

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["message"] == "The request has been sent to the client"
    assert isinstance(body["ts"], int) and body["ts"] > 1_600_000_000_000
    prefix = f"{sandbox.bugpilot_url}/api/v1/session-info/{SANDBOX_WORKSPACE_ID}/"
    assert body["sessionInfoUrl"].startswith(prefix)


def test_each_action_gets_a_fresh_session_token(sandbox: Sandbox) -> None:
    urls = {action(sandbox).json()["sessionInfoUrl"] for _ in range(3)}

    assert len(urls) == 3


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": "Bugpilot API Client/1.0"},
        {"X-Bugpilot-Api-Key": SANDBOX_BUGPILOT_API_KEY},
        {"User-Agent": "python-requests", "X-Bugpilot-Api-Key": "ws-sandbox-key"},
        {"User-Agent": "Bugpilot API Client/1.0", "X-Bugpilot-Api-Key": "ws-other"},
    ],
    ids=["no-key", "default-agent", "other-agent", "wrong-key"],
)
def test_missing_or_wrong_client_headers_get_an_opaque_401(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    if "User-Agent" not in headers:
        headers = {**headers, "User-Agent": "python-requests/2"}

    response = action(sandbox, headers=headers)

    assert response.status_code == 401
    assert response.text == "Unauthorized"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_the_record_never_holds_an_api_key(sandbox: Sandbox) -> None:
    action(sandbox)
    action(sandbox, headers={**HEADERS, "X-Bugpilot-Api-Key": "ws-guessed-secret"})

    raw = requests.get(f"{sandbox.bugpilot_url}/_sandbox/state", timeout=5).text
    first, second = control(sandbox).state()["actions"]

    assert SANDBOX_BUGPILOT_API_KEY not in raw
    assert "ws-guessed-secret" not in raw
    assert first["api_key_matched"] is True
    assert (second["api_key_matched"], second["status"]) == (False, 401)


@pytest.mark.parametrize("missing", ["workspaceId", "userId", "action"])
def test_a_missing_field_is_missing_fields(sandbox: Sandbox, missing: str) -> None:
    changes: dict[str, Any] = {missing: None}

    response = action(sandbox, **changes)

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "MISSING_FIELDS"
    assert body["error_message"]
    assert isinstance(body["ts"], int)


def test_a_body_that_is_not_json_is_missing_fields(sandbox: Sandbox) -> None:
    response = requests.post(
        f"{sandbox.bugpilot_url}/api/v1/action",
        data="not json",
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=5,
    )

    assert (response.status_code, response.json()["error"]) == (400, "MISSING_FIELDS")


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"action": "take-photo"}, 400, "INVALID_ACTION"),
        ({"workspaceId": "ws_other"}, 403, "NO_ACCESS"),
        ({"userId": "nobody@example.com"}, 404, "USER_NOT_CONNECTED"),
    ],
)
def test_error_codes(
    sandbox: Sandbox, changes: dict[str, Any], status: int, error: str
) -> None:
    response = action(sandbox, **changes)

    assert response.status_code == status
    assert response.json()["error"] == error
    assert "sessionInfoUrl" not in response.json()


@pytest.mark.parametrize(
    "user", ["user-123", "jane@example.com", "70", "joe@example.com"]
)
def test_seed_users_are_online(sandbox: Sandbox, user: str) -> None:
    assert action(sandbox, userId=user).status_code == 200


@pytest.mark.parametrize(
    "name", ["show-recording-ui", "upload-screenshot", "upload-session"]
)
def test_every_documented_action_is_accepted(sandbox: Sandbox, name: str) -> None:
    assert action(sandbox, action=name).status_code == 200


def test_users_can_be_marked_online_and_offline(sandbox: Sandbox) -> None:
    answer = control(sandbox).set_users(online=["amy"], offline=["user-123"])

    assert "amy" in answer["online"] and "user-123" not in answer["online"]
    assert action(sandbox, userId="amy").status_code == 200
    assert action(sandbox, userId="user-123").status_code == 404


def test_all_online_accepts_any_user(sandbox: Sandbox) -> None:
    control(sandbox).set_all_online()
    assert action(sandbox, userId="someone-new").status_code == 200

    control(sandbox).set_all_online(False)
    assert action(sandbox, userId="someone-new").status_code == 404


def test_offline_next_answers_user_not_connected_n_times(sandbox: Sandbox) -> None:
    control(sandbox).set_faults(offline_next=2)

    statuses = [action(sandbox).status_code for _ in range(3)]

    assert statuses == [404, 404, 200]
    assert control(sandbox).faults()["injected"] == {"offline": 2}


def test_offline_next_is_a_bugpilot_setting_only(sandbox: Sandbox) -> None:
    response = requests.post(
        f"{sandbox.zendesk_url}/_sandbox/faults", json={"offline_next": 1}, timeout=5
    )

    assert response.status_code == 400
    assert "offline_next" in response.json()["error"]


def poll(url: str, accept: str = "application/json") -> requests.Response:
    return requests.get(
        url, headers={"Accept": accept}, allow_redirects=False, timeout=5
    )


def test_session_info_gives_the_report_url(sandbox: Sandbox) -> None:
    url = action(sandbox).json()["sessionInfoUrl"]

    response = poll(url)

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["reportUrl"].startswith("https://dash.bugpilot.io/report/r1-")
    assert isinstance(body["ts"], int)


def test_session_info_redirects_a_browser(sandbox: Sandbox) -> None:
    url = action(sandbox).json()["sessionInfoUrl"]
    report_url = poll(url).json()["reportUrl"]

    response = poll(url, accept="text/html,application/xhtml+xml")

    assert response.status_code == 302
    assert response.headers["Location"] == report_url


def test_report_is_not_found_for_the_first_polls(sandbox: Sandbox) -> None:
    control(sandbox).settings(report_after_polls=2)
    url = action(sandbox).json()["sessionInfoUrl"]

    first, second, third = poll(url), poll(url), poll(url)

    assert first.status_code == second.status_code == 404
    assert first.json()["error"] == "REPORT_NOT_FOUND"
    assert third.status_code == 200
    token = url.rsplit("/", 1)[1]
    polls = control(sandbox).state()["polls"]
    assert polls["by_token"][token] == 3
    assert polls["total"] == 3


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/session-info/{SANDBOX_WORKSPACE_ID}/unknown-token",
        "/api/v1/session-info/ws_other/{token}",
    ],
    ids=["unknown-token", "other-workspace"],
)
def test_an_unknown_session_is_invalid_session_token(
    sandbox: Sandbox, path: str
) -> None:
    token = action(sandbox).json()["sessionInfoUrl"].rsplit("/", 1)[1]

    response = poll(sandbox.bugpilot_url + path.format(token=token))

    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_SESSION_TOKEN"
    assert control(sandbox).state()["polls"]["invalid"] == 1


def test_every_call_is_recorded_with_counters(sandbox: Sandbox) -> None:
    first = action(sandbox).json()
    action(sandbox)
    action(sandbox, userId="offline-user")

    state = control(sandbox).state()

    assert [entry["seq"] for entry in state["actions"]] == [1, 2, 3]
    entry = state["actions"][0]
    assert entry["userId"] == "user-123"
    assert entry["action"] == "upload-screenshot"
    assert entry["userProvidedDescription"] == "Zendesk ticket 35436"
    assert entry["headers"]["User-Agent"] == "Bugpilot API Client/1.0"
    assert entry["sessionInfoUrl"] == first["sessionInfoUrl"]
    assert (entry["status"], entry["error"], entry["fault"]) == (200, None, None)
    assert state["actions"][2]["error"] == "USER_NOT_CONNECTED"
    assert state["action_counts"] == {
        "total": 3,
        "ok": 2,
        "by_status": {"200": 2, "404": 1},
        "by_error": {"USER_NOT_CONNECTED": 1},
    }
    assert state["ok_by_description"] == {"Zendesk ticket 35436": 2}
    assert state["ok_by_user"] == {"user-123": 2}
    assert state["requests"] == {"POST /api/v1/action": 3}


def test_reset_restores_the_seed(sandbox: Sandbox) -> None:
    ctl = control(sandbox)
    ctl.set_users(offline=["user-123"], all_online=True)
    ctl.settings(report_after_polls=5)
    action(sandbox)

    ctl.reset()

    state = ctl.state()
    assert state["actions"] == [] and state["sessions"] == {}
    assert state["all_online"] is False
    assert "user-123" in state["online"]
    assert state["settings"] == {"report_after_polls": 0}


def test_bad_control_input_is_rejected(sandbox: Sandbox) -> None:
    base = f"{sandbox.bugpilot_url}/_sandbox"

    users = requests.post(f"{base}/users", json={"online": "amy"}, timeout=5)
    settings = requests.post(
        f"{base}/settings", json={"report_after_polls": -1}, timeout=5
    )
    unknown = requests.post(f"{base}/settings", json={"colour": "red"}, timeout=5)

    assert users.status_code == settings.status_code == unknown.status_code == 400


def test_an_unknown_path_is_a_json_404(sandbox: Sandbox) -> None:
    response = requests.get(f"{sandbox.bugpilot_url}/api/v2/nothing", timeout=5)

    assert response.status_code == 404
    assert response.json()["error"] == "NOT_FOUND"

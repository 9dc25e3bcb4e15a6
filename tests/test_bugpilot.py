"""The Bugpilot client: exact requests, and the meaning of every answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses
from prometheus_client import REGISTRY

from relay.bugpilot import USER_AGENT, BugpilotClient, Capture
from relay.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    TransientError,
    UserNotConnected,
)

API = "https://widget-api.bugpilot.io"
ACTION_URL = f"{API}/api/v1/action"
SESSION_URL = f"{API}/api/v1/session-info/ws-1/tok-abc"
OK = {
    "ok": True,
    "message": "The request has been sent to the client",
    "ts": 1669738581021,
    "sessionInfoUrl": SESSION_URL,
}


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> BugpilotClient:
    return BugpilotClient(
        api_url=API, api_key="ws-secret", workspace_id="ws-1", sleep=sleeps.append
    )


def requests_counted(action: str, outcome: str) -> float:
    labels = {"action": action, "outcome": outcome}
    return REGISTRY.get_sample_value("relay_bugpilot_requests_total", labels) or 0.0


def calls_timed(action: str) -> float:
    value = REGISTRY.get_sample_value(
        "relay_bugpilot_request_duration_seconds_count", {"action": action}
    )
    return value or 0.0


# -- request_action: the request ------------------------------------------------


def test_request_action_sends_the_documented_request(
    api: Any, client: BugpilotClient
) -> None:
    api.post(ACTION_URL, json=OK)
    capture = client.request_action(
        action="upload-session",
        user_id="user-123",
        description="Requested from Zendesk ticket #35436",
    )

    assert capture == Capture(
        session_info_url=SESSION_URL,
        message="The request has been sent to the client",
    )
    (call,) = api.calls
    assert call.request.method == "POST"
    assert call.request.headers["User-Agent"] == "Bugpilot API Client/1.0" == USER_AGENT
    assert call.request.headers["X-Bugpilot-Api-Key"] == "ws-secret"
    assert call.request.headers["Content-Type"] == "application/json"
    assert json.loads(call.request.body) == {
        "workspaceId": "ws-1",
        "userId": "user-123",
        "action": "upload-session",
        "userProvidedDescription": "Requested from Zendesk ticket #35436",
    }


def test_no_description_means_no_description_key(
    api: Any, client: BugpilotClient
) -> None:
    api.post(ACTION_URL, json=OK)
    client.request_action(action="upload-screenshot", user_id="jane@example.com")
    body = json.loads(api.calls[0].request.body)
    assert "userProvidedDescription" not in body
    assert body == {
        "workspaceId": "ws-1",
        "userId": "jane@example.com",
        "action": "upload-screenshot",
    }


def test_success_without_a_message_is_still_a_capture(
    api: Any, client: BugpilotClient
) -> None:
    api.post(ACTION_URL, json={"ok": True, "sessionInfoUrl": SESSION_URL})
    capture = client.request_action(action="upload-session", user_id="u")
    assert capture == Capture(session_info_url=SESSION_URL, message=None)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"sessionInfoUrl": SESSION_URL}),
        (202, {"ok": True, "sessionInfoUrl": SESSION_URL}),
        # The body decides, whatever the status says.
        (400, {"ok": True, "sessionInfoUrl": SESSION_URL}),
    ],
)
def test_capture_url_without_an_error_code_is_success(
    api: Any, client: BugpilotClient, status: int, body: dict[str, Any]
) -> None:
    api.post(ACTION_URL, status=status, json=body)
    capture = client.request_action(action="upload-session", user_id="u")
    assert capture.session_info_url == SESSION_URL


def test_success_is_counted_once_and_timed(api: Any, client: BugpilotClient) -> None:
    api.post(ACTION_URL, json=OK)
    counted = requests_counted("show-recording-ui", "ok")
    timed = calls_timed("show-recording-ui")
    client.request_action(action="show-recording-ui", user_id="u")
    assert requests_counted("show-recording-ui", "ok") == counted + 1
    assert calls_timed("show-recording-ui") == timed + 1


# -- request_action: classification ------------------------------------------------


def error_body(code: str) -> dict[str, Any]:
    return {"error": code, "error_message": f"{code} happened", "ts": 1}


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (200, error_body("USER_NOT_CONNECTED"), UserNotConnected, "user_not_connected"),
        (400, error_body("USER_NOT_CONNECTED"), UserNotConnected, "user_not_connected"),
        (200, error_body("MISSING_FIELDS"), PermanentError, "missing_fields"),
        (400, error_body("MISSING_FIELDS"), PermanentError, "missing_fields"),
        (500, error_body("INVALID_ACTION"), PermanentError, "invalid_action"),
        (400, error_body("INVALID_ACTION"), PermanentError, "invalid_action"),
        (403, error_body("NO_ACCESS"), PermanentError, "no_access"),
        (200, error_body("NO_ACCESS"), PermanentError, "no_access"),
        # An error code wins over ok:true and a sessionInfoUrl beside it.
        (200, {**OK, "error": "NO_ACCESS"}, PermanentError, "no_access"),
        (401, "Unauthorized", PermanentError, "unauthorized"),
        (404, "", PermanentError, "http_404"),
        (422, {"error": "SOMETHING_NEW"}, PermanentError, "http_422"),
    ],
)
def test_answers_that_end_the_job_at_once(
    api: Any,
    client: BugpilotClient,
    sleeps: list[float],
    status: int,
    body: Any,
    kind: type[DeliveryError],
    reason: str,
) -> None:
    if isinstance(body, dict):
        api.post(ACTION_URL, status=status, json=body)
    else:
        api.post(ACTION_URL, status=status, body=body)
    code = body.get("error") if isinstance(body, dict) else None
    counted = requests_counted("upload-session", reason)

    with pytest.raises(kind) as caught:
        client.request_action(action="upload-session", user_id="u")

    error = caught.value
    assert type(error) is kind
    assert (error.reason, error.http_status, error.error_code) == (reason, status, code)
    assert error.destination == "bugpilot"
    assert len(api.calls) == 1, "not retried inside the attempt"
    assert sleeps == []
    assert requests_counted("upload-session", reason) == counted + 1


@pytest.mark.parametrize(
    ("status", "body", "reason", "code"),
    [
        (200, error_body("INTERNAL_ERROR"), "internal_error", "INTERNAL_ERROR"),
        (400, error_body("INTERNAL_ERROR"), "internal_error", "INTERNAL_ERROR"),
        (500, error_body("INTERNAL_ERROR"), "internal_error", "INTERNAL_ERROR"),
        (502, "<html>Bad gateway</html>", "http_502", None),
        (503, {}, "http_503", None),
        (200, {}, "bad_response", None),
        (200, {"ok": True}, "bad_response", None),
        (200, {"ok": True, "sessionInfoUrl": ""}, "bad_response", None),
        (200, {"ok": True, "sessionInfoUrl": 5}, "bad_response", None),
        (200, "not json", "bad_response", None),
        (201, [OK], "bad_response", None),
        (200, {"sessionInfoUrl": SESSION_URL, "error": "NEW"}, "bad_response", "NEW"),
    ],
)
def test_answers_worth_another_try(
    api: Any,
    client: BugpilotClient,
    sleeps: list[float],
    status: int,
    body: Any,
    reason: str,
    code: str | None,
) -> None:
    if isinstance(body, dict | list):
        api.post(ACTION_URL, status=status, json=body)
    else:
        api.post(ACTION_URL, status=status, body=body)
    counted = requests_counted("upload-session", reason)
    timed = calls_timed("upload-session")

    with pytest.raises(TransientError) as caught:
        client.request_action(action="upload-session", user_id="u")

    error = caught.value
    assert type(error) is TransientError
    assert (error.reason, error.http_status, error.error_code) == (reason, status, code)
    # Short retries inside the attempt, with the sleep injected.
    assert len(api.calls) == 3
    assert len(sleeps) == 2
    # Counted once per request_action, timed once per HTTP call.
    assert requests_counted("upload-session", reason) == counted + 1
    assert calls_timed("upload-session") == timed + 3


def test_user_not_connected_is_not_retried_inside_the_attempt(
    api: Any, client: BugpilotClient
) -> None:
    api.post(ACTION_URL, json=error_body("USER_NOT_CONNECTED"))
    with pytest.raises(UserNotConnected) as caught:
        client.request_action(action="upload-session", user_id="u")
    assert isinstance(caught.value, TransientError)
    assert len(api.calls) == 1


def test_transient_error_then_success(
    api: Any, client: BugpilotClient, sleeps: list[float]
) -> None:
    api.post(ACTION_URL, status=200, json=error_body("INTERNAL_ERROR"))
    api.post(ACTION_URL, json=OK)
    capture = client.request_action(action="upload-session", user_id="u")
    assert capture.session_info_url == SESSION_URL
    assert len(sleeps) == 1


def test_short_retry_after_is_waited_out(
    api: Any, client: BugpilotClient, sleeps: list[float]
) -> None:
    api.post(ACTION_URL, status=429, headers={"Retry-After": "3"})
    api.post(ACTION_URL, json=OK)
    client.request_action(action="upload-session", user_id="u")
    assert sleeps == [3.0]


def test_long_retry_after_is_handed_to_the_job(
    api: Any, client: BugpilotClient, sleeps: list[float]
) -> None:
    api.post(ACTION_URL, status=429, headers={"Retry-After": "120"}, json={})
    with pytest.raises(RateLimited) as caught:
        client.request_action(action="upload-session", user_id="u")
    assert (caught.value.reason, caught.value.retry_after) == ("rate_limited", 120.0)
    assert caught.value.http_status == 429
    assert sleeps == []
    assert len(api.calls) == 1


def test_timeout_is_transient_and_counted(api: Any, client: BugpilotClient) -> None:
    api.post(ACTION_URL, body=requests.ReadTimeout("slow"))
    counted = requests_counted("upload-session", "timeout")
    with pytest.raises(TransientError) as caught:
        client.request_action(action="upload-session", user_id="u")
    assert caught.value.reason == "timeout"
    assert requests_counted("upload-session", "timeout") == counted + 1


def test_error_message_is_kept_for_the_logs(api: Any, client: BugpilotClient) -> None:
    api.post(ACTION_URL, status=400, json=error_body("MISSING_FIELDS"))
    with pytest.raises(PermanentError, match="MISSING_FIELDS: MISSING_FIELDS happened"):
        client.request_action(action="upload-session", user_id="u")


# -- report_url ---------------------------------------------------------------


def test_report_url_reads_the_report(api: Any, client: BugpilotClient) -> None:
    report = "https://dash.bugpilot.io/report/r1-report-id"
    api.get(SESSION_URL, json={"ok": True, "reportUrl": report, "ts": 1})
    assert client.report_url(SESSION_URL) == report
    headers = api.calls[0].request.headers
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT


def test_report_not_found_means_not_yet(api: Any, client: BugpilotClient) -> None:
    api.get(SESSION_URL, status=404, json=error_body("REPORT_NOT_FOUND"))
    assert client.report_url(SESSION_URL) is None
    assert len(api.calls) == 1


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (
            400,
            error_body("INVALID_SESSION_TOKEN"),
            PermanentError,
            "invalid_session_token",
        ),
        (404, {}, PermanentError, "http_404"),
        (401, {}, PermanentError, "unauthorized"),
        (429, {}, RateLimited, "rate_limited"),
        (503, {}, TransientError, "http_503"),
        (200, {"ok": True}, TransientError, "bad_response"),
        (200, {"error": "REPORT_NOT_FOUND"}, TransientError, "bad_response"),
    ],
)
def test_report_url_errors(
    api: Any,
    client: BugpilotClient,
    status: int,
    body: dict[str, Any],
    kind: type[DeliveryError],
    reason: str,
) -> None:
    api.get(SESSION_URL, status=status, json=body)
    with pytest.raises(kind) as caught:
        client.report_url(SESSION_URL)
    assert type(caught.value) is kind
    assert (caught.value.reason, caught.value.http_status) == (reason, status)


def test_foreign_session_url_is_never_requested(
    api: Any, client: BugpilotClient
) -> None:
    with pytest.raises(PermanentError) as caught:
        client.report_url("https://evil.example/api/v1/session-info/ws-1/tok")
    assert caught.value.reason == "foreign_session_url"
    assert not api.calls


# -- owns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "owned"),
    [
        (SESSION_URL, True),
        ("https://WIDGET-API.bugpilot.io/x", True),
        ("https://widget-api.bugpilot.io:443/x", True),
        ("HTTPS://widget-api.bugpilot.io", True),
        ("http://widget-api.bugpilot.io/x", False),
        ("https://widget-api.bugpilot.io:8443/x", False),
        ("https://dash.bugpilot.io/report/r1", False),
        ("https://widget-api.bugpilot.io.evil.example/x", False),
        ("https://widget-api.bugpilot.io@evil.example/x", False),
        ("https://user@widget-api.bugpilot.io/x", False),
        ("https://evil.example/?u=https://widget-api.bugpilot.io", False),
        ("https://evil.example\\@widget-api.bugpilot.io/x", False),
        ("https://widget-api.bugpilot.io:99999/x", False),
        ("https://widget-api.bugpilot.io:port/x", False),
        ("//widget-api.bugpilot.io/x", False),
        ("/api/v1/session-info/ws-1/tok", False),
        ("ftp://widget-api.bugpilot.io/x", False),
        ("", False),
    ],
)
def test_owns_only_the_configured_origin(
    client: BugpilotClient, url: str, owned: bool
) -> None:
    assert client.owns(url) is owned


def test_owns_follows_the_configured_url() -> None:
    local = BugpilotClient(
        api_url="http://127.0.0.1:8091", api_key="k", workspace_id="w"
    )
    assert local.owns("http://127.0.0.1:8091/api/v1/session-info/w/t")
    assert not local.owns("http://127.0.0.1:8092/api/v1/session-info/w/t")
    assert not local.owns(SESSION_URL)

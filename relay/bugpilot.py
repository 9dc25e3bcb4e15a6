"""The Bugpilot Actions API client, and what each of its answers means.

``request_action`` asks Bugpilot to capture something from an end user's open
browser and returns the ``sessionInfoUrl`` where the capture will appear.
``report_url`` asks that URL for the dashboard report, once there is one.

Bugpilot puts its verdict in the body's ``error`` code, sometimes under a 200, so
answers are classified by that code first and by the HTTP status after::

    USER_NOT_CONNECTED                      UserNotConnected   wait for the user
    INTERNAL_ERROR, 429, 5xx, bad body      TransientError     try again later
    MISSING_FIELDS, INVALID_ACTION,         PermanentError     the job is dead
    NO_ACCESS, 401, other 4xx
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import requests

from relay import metrics
from relay.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    TransientError,
    UserNotConnected,
)
from relay.outbound import Outbound, parse_retry_after

USER_AGENT = "Bugpilot API Client/1.0"
ACTION_PATH = "/api/v1/action"

PERMANENT_CODES = frozenset({"MISSING_FIELDS", "INVALID_ACTION", "NO_ACCESS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Capture:
    """Bugpilot accepted an action: where its result will be, and its message."""

    session_info_url: str
    message: str | None


class BugpilotClient:
    """Requests captures from Bugpilot and reads where their reports are."""

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        workspace_id: str,
        rate_per_minute: float | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.workspace_id = workspace_id
        self.outbound = Outbound(
            "bugpilot",
            api_url,
            headers={"User-Agent": USER_AGENT, "X-Bugpilot-Api-Key": api_key},
            session=session,
            rate_per_minute=rate_per_minute,
            sleep=sleep,
        )
        self._origin = _origin(api_url)

    def request_action(
        self, *, action: str, user_id: str, description: str | None = None
    ) -> Capture:
        """Ask Bugpilot to run ``action`` in the browser of ``user_id``."""
        payload = {
            "workspaceId": self.workspace_id,
            "userId": user_id,
            "action": action,
        }
        if description is not None:
            payload["userProvidedDescription"] = description

        try:
            response = self.outbound.request(
                "POST",
                ACTION_PATH,
                json=payload,
                classify=_classify_action,
                observe=metrics.BUGPILOT_DURATION.labels(action).observe,
            )
        except DeliveryError as exc:
            metrics.BUGPILOT_REQUESTS.labels(action, exc.reason).inc()
            raise
        metrics.BUGPILOT_REQUESTS.labels(action, "ok").inc()

        body = _body(response)
        message = body.get("message")
        return Capture(
            session_info_url=body["sessionInfoUrl"],
            message=message if isinstance(message, str) else None,
        )

    def report_url(self, session_info_url: str) -> str | None:
        """The dashboard report behind ``session_info_url``; None until it is saved."""
        if not self.owns(session_info_url):
            # The session sends the API key; it goes to the Bugpilot host only.
            raise PermanentError(
                "session info URL is not on the Bugpilot host",
                destination="bugpilot",
                reason="foreign_session_url",
            )
        response = self.outbound.request(
            "GET",
            session_info_url,
            headers={"Accept": "application/json"},
            classify=_classify_session_info,
        )
        if response.status_code == 404:
            return None
        url: str = _body(response)["reportUrl"]
        return url

    def owns(self, url: str) -> bool:
        """True only for a URL on the configured Bugpilot scheme, host and port."""
        origin = _origin(url)
        return origin is not None and origin == self._origin


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a plain http(s) URL; None for anything unusual."""
    if any(char.isspace() or char == "\\" for char in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    # Credentials in a URL are a classic way to disguise its real host.
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return (
        scheme,
        parts.hostname.lower(),
        _DEFAULT_PORTS[scheme] if port is None else port,
    )


def _body(response: requests.Response) -> dict[str, Any]:
    """The JSON object in an answer, or an empty dict when there is none."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _classify_action(response: requests.Response) -> None:
    """Raise what an Actions API answer means; return when it holds a capture."""
    body = _body(response)
    code = _error_code(body)
    if code == "USER_NOT_CONNECTED":
        raise _failure(UserNotConnected, response, body, "user_not_connected")
    if code == "INTERNAL_ERROR":
        raise _failure(TransientError, response, body, "internal_error")
    if code in PERMANENT_CODES:
        raise _failure(PermanentError, response, body, code.lower())

    url = body.get("sessionInfoUrl")
    if code is None and _is_text(url) and (body.get("ok") is True or _is_2xx(response)):
        return
    _raise_for_status(response, body)
    raise _failure(TransientError, response, body, "bad_response")


def _classify_session_info(response: requests.Response) -> None:
    """Raise what a Session Info answer means; return for a report or none yet."""
    body = _body(response)
    code = _error_code(body)
    if code == "REPORT_NOT_FOUND" and response.status_code == 404:
        return
    if code == "INVALID_SESSION_TOKEN":
        raise _failure(PermanentError, response, body, "invalid_session_token")

    if code is None and _is_text(body.get("reportUrl")) and _is_2xx(response):
        return
    _raise_for_status(response, body)
    raise _failure(TransientError, response, body, "bad_response")


def _raise_for_status(response: requests.Response, body: dict[str, Any]) -> None:
    """Raise for an answer that is not 2xx; the reason names the status."""
    status = response.status_code
    if _is_2xx(response):
        return
    if status == 429:
        raise _failure(RateLimited, response, body, "rate_limited")
    if status == 401:
        raise _failure(PermanentError, response, body, "unauthorized")
    if 400 <= status < 500:
        raise _failure(PermanentError, response, body, f"http_{status}")
    raise _failure(TransientError, response, body, f"http_{status}")


def _failure(
    kind: type[DeliveryError],
    response: requests.Response,
    body: dict[str, Any],
    reason: str,
) -> DeliveryError:
    """A ``kind`` error for this answer, carrying its status and error code."""
    code = _error_code(body)
    message = f"bugpilot answered {response.status_code}"
    if code:
        message += f" {code}"
    detail = body.get("error_message")
    if _is_text(detail):
        message += f": {detail[:200]}"
    return kind(
        message,
        destination="bugpilot",
        reason=reason,
        http_status=response.status_code,
        error_code=code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def _error_code(body: dict[str, Any]) -> str | None:
    code = body.get("error")
    return code[:64] if _is_text(code) else None


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _is_2xx(response: requests.Response) -> bool:
    return 200 <= response.status_code < 300

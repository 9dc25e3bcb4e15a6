"""An emulator of Bugpilot's Actions and Session Info APIs.

``POST /api/v1/action`` checks the client headers, the body and whether the user
is online, answers with a ``sessionInfoUrl`` on this server, and records every
call (never the API key itself). ``GET /api/v1/session-info/<ws>/<token>``
answers ``REPORT_NOT_FOUND`` for the first ``report_after_polls`` polls of a
token, then the report URL as JSON or as a redirect for browsers.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from flask import Flask, Response, request

from relay.sandbox.base import (
    EmulatorState,
    JSONObject,
    answer,
    create_emulator_app,
    json_object,
    now_ms,
)
from relay.sandbox.credentials import SANDBOX_BUGPILOT_API_KEY, SANDBOX_WORKSPACE_ID
from relay.sandbox.faults import FaultKind

USER_AGENT = "Bugpilot API Client/1.0"
ACTIONS = ("show-recording-ui", "upload-screenshot", "upload-session")
SEED_ONLINE = ("user-123", "jane@example.com", "70", "joe@example.com")
REPORT_BASE_URL = "https://dash.bugpilot.io/report/r1-"
ACTION_PATH = "/api/v1/action"

_SECRET_HEADERS = frozenset({"x-bugpilot-api-key", "authorization", "cookie"})
_MESSAGES = {
    "MISSING_FIELDS": "workspaceId, userId and action are required",
    "INVALID_ACTION": "action must be one of " + ", ".join(ACTIONS),
    "NO_ACCESS": "The API key has no access to this workspace",
    "USER_NOT_CONNECTED": "The user is not connected",
    "INTERNAL_ERROR": "Internal server error",
    "RATE_LIMITED": "Too many requests",
    "INVALID_SESSION_TOKEN": "Invalid workspace or session token",
    "REPORT_NOT_FOUND": (
        "The report was deleted, not correctly saved from the client, "
        "or canceled by the user."
    ),
    "NOT_FOUND": "Not found",
}


@dataclass
class Session:
    """What a ``sessionInfoUrl`` token stands for."""

    workspace_id: str
    user_id: str
    action: str
    report_url: str
    polls: int = 0


class BugpilotState(EmulatorState):
    """Online users, recorded action calls and session tokens."""

    name: ClassVar[str] = "bugpilot"
    default_settings: ClassVar[dict[str, bool | int]] = {"report_after_polls": 0}
    offline_faults: ClassVar[bool] = True

    def seed(self) -> None:
        """Seed users online, nothing recorded."""
        self.online: set[str] = set(SEED_ONLINE)
        self.all_online = False
        self.actions: list[JSONObject] = []
        self.sessions: dict[str, Session] = {}
        self.polls_total = 0
        self.polls_invalid = 0

    def snapshot(self) -> JSONObject:
        """Users, recorded actions with their counts, sessions and polls."""
        ok = [entry for entry in self.actions if entry["status"] == 200]
        return {
            "workspace_id": SANDBOX_WORKSPACE_ID,
            "online": sorted(self.online),
            "all_online": self.all_online,
            "actions": [dict(entry) for entry in self.actions],
            "action_counts": {
                "total": len(self.actions),
                "ok": len(ok),
                "by_status": _count(str(entry["status"]) for entry in self.actions),
                "by_error": _count(
                    entry["error"] for entry in self.actions if entry["error"]
                ),
            },
            "ok_by_user": _count(entry["userId"] for entry in ok),
            "ok_by_description": _count(
                entry["userProvidedDescription"] for entry in ok
            ),
            "sessions": {
                token: {
                    "workspaceId": session.workspace_id,
                    "userId": session.user_id,
                    "action": session.action,
                    "reportUrl": session.report_url,
                    "polls": session.polls,
                }
                for token, session in self.sessions.items()
            },
            "polls": {
                "total": self.polls_total,
                "invalid": self.polls_invalid,
                "by_token": {
                    token: session.polls for token, session in self.sessions.items()
                },
            },
        }

    def set_users(
        self,
        *,
        online: list[str],
        offline: list[str],
        all_online: bool | None,
    ) -> JSONObject:
        """Mark users online or offline, or every user online."""
        with self.lock:
            self.online.update(online)
            self.online.difference_update(offline)
            if all_online is not None:
                self.all_online = all_online
            return {"online": sorted(self.online), "all_online": self.all_online}

    def is_online(self, user_id: str) -> bool:
        """Whether the widget of ``user_id`` is connected."""
        return self.all_online or user_id in self.online

    def record(self, **entry: Any) -> None:
        """Append one action call to the record, in arrival order."""
        with self.lock:
            entry["seq"] = len(self.actions) + 1
            self.actions.append(entry)

    def fault_answer(self, kind: Literal["fail", "rate_limit"]) -> Response:
        """INTERNAL_ERROR or a 429 with Retry-After, in Bugpilot's error shape."""
        if kind == "rate_limit":
            return _error(
                "RATE_LIMITED", 429, {"Retry-After": str(self.faults.retry_after)}
            )
        return _error("INTERNAL_ERROR", self.faults.fail_status)

    def record_fault(self, kind: FaultKind) -> None:
        """Record a faulted action call like any other."""
        if request.path != ACTION_PATH:
            return
        body = json_object() or {}
        statuses = {"fail": self.faults.fail_status, "rate_limit": 429, "reset": None}
        self.record(
            **_call_fields(body),
            status=statuses[kind],
            error={"fail": "INTERNAL_ERROR", "rate_limit": "RATE_LIMITED"}.get(kind),
            fault=kind,
            sessionInfoUrl=None,
        )


def create_app(state: BugpilotState | None = None) -> Flask:
    """The Bugpilot emulator app, holding its data in ``state``."""
    state = state or BugpilotState()
    app = create_emulator_app(state)

    @app.post(ACTION_PATH)
    def action() -> Response:
        body = json_object() or {}
        fields = _call_fields(body)
        key_ok = request.headers.get("X-Bugpilot-Api-Key") == SANDBOX_BUGPILOT_API_KEY
        agent_ok = request.headers.get("User-Agent") == USER_AGENT

        def finish(status: int, error: str | None, url: str | None = None) -> None:
            state.record(
                **fields, status=status, error=error, fault=None, sessionInfoUrl=url
            )

        if not (key_ok and agent_ok):
            finish(401, "UNAUTHORIZED")
            return Response("Unauthorized", 401, mimetype="text/plain")

        workspace_id, user_id, action_name = (
            body.get("workspaceId"),
            body.get("userId"),
            body.get("action"),
        )
        error: str | None = None
        if not all(
            isinstance(value, str | int) and str(value).strip()
            for value in (workspace_id, user_id, action_name)
        ):
            error = "MISSING_FIELDS"
        elif action_name not in ACTIONS:
            error = "INVALID_ACTION"
        elif workspace_id != SANDBOX_WORKSPACE_ID:
            error = "NO_ACCESS"
        elif state.faults.take_offline():
            error = "USER_NOT_CONNECTED"
        else:
            with state.lock:
                if not state.is_online(str(user_id)):
                    error = "USER_NOT_CONNECTED"

        if error is not None:
            status = {"NO_ACCESS": 403, "USER_NOT_CONNECTED": 404}.get(error, 400)
            finish(status, error)
            return _error(error, status)

        token = secrets.token_hex(16)
        session_url = (
            f"{request.host_url.rstrip('/')}/api/v1/session-info/{workspace_id}/{token}"
        )
        with state.lock:
            state.sessions[token] = Session(
                workspace_id=str(workspace_id),
                user_id=str(user_id),
                action=str(action_name),
                report_url=REPORT_BASE_URL + token[:12],
            )
        finish(200, None, session_url)
        return answer(
            {
                "ok": True,
                "message": "The request has been sent to the client",
                "ts": now_ms(),
                "sessionInfoUrl": session_url,
            }
        )

    @app.get("/api/v1/session-info/<workspace_id>/<token>")
    def session_info(workspace_id: str, token: str) -> Response:
        with state.lock:
            state.polls_total += 1
            session = state.sessions.get(token)
            if session is None or session.workspace_id != workspace_id:
                state.polls_invalid += 1
                return _error("INVALID_SESSION_TOKEN", 400)
            session.polls += 1
            ready = session.polls > state.options["report_after_polls"]
            report_url = session.report_url

        if not ready:
            return _error("REPORT_NOT_FOUND", 404)
        wanted = request.accept_mimetypes.best_match(["application/json", "text/html"])
        if wanted == "text/html":
            return Response(status=302, headers={"Location": report_url})
        return answer({"ok": True, "reportUrl": report_url, "ts": now_ms()})

    @app.post("/_sandbox/users")
    def set_users() -> Response:
        body = json_object()
        if body is None:
            return answer({"error": "send a JSON object"}, 400)
        online, offline = body.get("online", []), body.get("offline", [])
        all_online = body.get("all_online")
        if not (_strings(online) and _strings(offline)):
            return answer({"error": "online and offline must be lists of strings"}, 400)
        if all_online is not None and not isinstance(all_online, bool):
            return answer({"error": "all_online must be true or false"}, 400)
        return answer(
            state.set_users(online=online, offline=offline, all_online=all_online)
        )

    @app.errorhandler(404)
    def not_found(_: Exception) -> Response:
        return _error("NOT_FOUND", 404)

    return app


def _error(code: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return answer(
        {"error": code, "error_message": _MESSAGES[code], "ts": now_ms()},
        status,
        headers,
    )


def _call_fields(body: JSONObject) -> JSONObject:
    """What an action call sent, headers included but never the API key."""
    return {
        "at": time.time(),
        "workspaceId": body.get("workspaceId"),
        "userId": body.get("userId"),
        "action": body.get("action"),
        "userProvidedDescription": body.get("userProvidedDescription"),
        "headers": {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _SECRET_HEADERS
        },
        "api_key_matched": (
            request.headers.get("X-Bugpilot-Api-Key") == SANDBOX_BUGPILOT_API_KEY
        ),
    }


def _count(values: Any) -> dict[str, int]:
    return dict(Counter(str(value) for value in values))


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)

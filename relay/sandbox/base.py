"""What the three emulators share: one lock, request counts, faults, control routes.

Each emulator keeps its data in an ``EmulatorState`` subclass and builds its Flask
app with ``create_emulator_app``, which adds:

- a count of every API call by method and route pattern;
- fault injection on API paths, never on ``/_sandbox/*``;
- the control routes every emulator has, answered to loopback clients only:
  ``GET /_sandbox/state``, ``POST /_sandbox/reset``,
  ``GET|POST|DELETE /_sandbox/faults`` and ``GET|POST /_sandbox/settings``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from flask import Blueprint, Flask, Response, jsonify, request

from relay.sandbox.faults import FaultKind, Faults, drop_connection

CONTROL_PREFIX = "/_sandbox"
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

JSONObject = dict[str, Any]


def answer(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response with ``status`` and extra ``headers``."""
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_object() -> JSONObject | None:
    """The request body if it is a JSON object, else None."""
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


def now_ms() -> int:
    """Milliseconds since the epoch, as Bugpilot's ``ts`` fields carry."""
    return int(time.time() * 1000)


def now_iso() -> str:
    """The current UTC time to the second, as Zendesk writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EmulatorState(ABC):
    """One emulator's data, behind one lock, with its faults and request counts.

    Subclasses fill in ``seed`` (the data after start and reset), ``snapshot``
    (their part of ``GET /_sandbox/state``) and ``fault_answer`` (how their API
    says "failed" and "too many requests").
    """

    name: ClassVar[str] = "emulator"
    default_settings: ClassVar[Mapping[str, bool | int]] = {}
    offline_faults: ClassVar[bool] = False

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = Faults(offline=self.offline_faults)
        self.requests: Counter[str] = Counter()
        self.options: dict[str, bool | int] = dict(self.default_settings)
        self.seed()

    @abstractmethod
    def seed(self) -> None:
        """Replace all data with the seed data (called with the lock held)."""

    @abstractmethod
    def snapshot(self) -> JSONObject:
        """Everything the emulator holds, as JSON (called with the lock held)."""

    @abstractmethod
    def fault_answer(self, kind: Literal["fail", "rate_limit"]) -> Response:
        """The API's own answer for an injected failure or rate limit."""

    def record_fault(self, kind: FaultKind) -> None:  # noqa: B027 - optional hook
        """Note an API call that a fault answered (the request is current)."""

    def reset(self) -> None:
        """Back to the seed data, default settings, no faults and no counts."""
        with self.lock:
            self.faults = Faults(offline=self.offline_faults)
            self.requests = Counter()
            self.options = dict(self.default_settings)
            self.seed()

    def count(self, method: str, pattern: str) -> None:
        """Count one API call under ``"METHOD /route/<pattern>"``."""
        with self.lock:
            self.requests[f"{method} {pattern}"] += 1

    def state(self) -> JSONObject:
        """The body of ``GET /_sandbox/state``."""
        with self.lock:
            body: JSONObject = {"service": self.name, "settings": dict(self.options)}
            body.update(self.snapshot())
            body["requests"] = dict(sorted(self.requests.items()))
            body["faults"] = self.faults.snapshot()
            return body

    def change_settings(self, changes: Mapping[str, Any]) -> JSONObject:
        """Apply ``changes`` to the settings; ``auto_create`` sets every auto_create_*.

        Raises ``ValueError`` for an unknown name or a value of the wrong type.
        """
        expanded = dict(changes)
        if "auto_create" in expanded:
            value = expanded.pop("auto_create")
            for name in self.default_settings:
                if name.startswith("auto_create_"):
                    expanded.setdefault(name, value)

        for name, value in expanded.items():
            if name not in self.default_settings:
                raise ValueError(f"unknown setting: {name}")
            if isinstance(self.default_settings[name], bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number, 0 or more")

        with self.lock:
            self.options.update(expanded)
            return dict(self.options)


def create_emulator_app(state: EmulatorState) -> Flask:
    """A Flask app with the shared hooks and control routes for ``state``."""
    app = Flask(f"relay.sandbox.{state.name}")

    @app.before_request
    def guard_and_inject() -> Response | None:
        if _is_control(request.path):
            if request.remote_addr not in LOOPBACK:
                return answer({"error": "control endpoints answer loopback only"}, 403)
            return None

        rule = request.url_rule
        pattern = rule.rule.removesuffix(".json") if rule else "<unknown>"
        state.count(request.method, pattern)

        decision = state.faults.draw()
        if decision.delay:
            time.sleep(decision.delay)
        if decision.kind is None:
            return None
        state.record_fault(decision.kind)
        if decision.kind == "reset":
            drop_connection(request.environ)
            # Writing this fails on the closed socket and the server lets it go.
            return Response(status=500)
        return state.fault_answer(decision.kind)

    app.register_blueprint(_control_blueprint(state))
    return app


def _is_control(path: str) -> bool:
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


def _control_blueprint(state: EmulatorState) -> Blueprint:
    control = Blueprint("sandbox_control", __name__, url_prefix=CONTROL_PREFIX)

    @control.get("/state")
    def show_state() -> Response:
        return answer(state.state())

    @control.post("/reset")
    def reset() -> Response:
        state.reset()
        return answer({"status": "reset"})

    @control.get("/faults")
    def show_faults() -> Response:
        return answer(state.faults.snapshot())

    @control.post("/faults")
    def set_faults() -> Response:
        changes = json_object()
        if changes is None:
            return answer({"error": "send a JSON object of fault settings"}, 400)
        try:
            state.faults.configure(changes)
        except ValueError as exc:
            return answer({"error": str(exc)}, 400)
        return answer(state.faults.snapshot())

    @control.delete("/faults")
    def clear_faults() -> Response:
        state.faults.clear()
        return answer(state.faults.snapshot())

    @control.get("/settings")
    def show_settings() -> Response:
        with state.lock:
            return answer(dict(state.options))

    @control.post("/settings")
    def change_settings() -> Response:
        changes = json_object()
        if changes is None:
            return answer({"error": "send a JSON object of settings"}, 400)
        try:
            return answer(state.change_settings(changes))
        except ValueError as exc:
            return answer({"error": str(exc)}, 400)

    return control

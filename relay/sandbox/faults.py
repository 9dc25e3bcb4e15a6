"""Faults the emulators can be told to inject into their API answers.

A test configures faults over ``POST /_sandbox/faults``; every later API call asks
``Faults.draw`` what to do. Counted faults (``fail_next``, ``rate_limit_next``,
``reset_next``) are used up first, in that order: reset, rate limit, failure.
Then one random number per call picks at most one of the rates, so a ``seed``
makes a run repeatable. Latency is added to every API answer, faulted or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["fail", "rate_limit", "reset"]

_COUNTED = ("reset_next", "rate_limit_next", "fail_next")
_RATES = ("reset_rate", "rate_limit_rate", "fail_rate")
_KIND_OF: dict[str, FaultKind] = {
    "reset_next": "reset",
    "rate_limit_next": "rate_limit",
    "fail_next": "fail",
    "reset_rate": "reset",
    "rate_limit_rate": "rate_limit",
    "fail_rate": "fail",
}


@dataclass
class FaultSettings:
    """What an emulator is currently told to do wrong; all off by default."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_next: int = 0
    fail_status: int = 500
    rate_limit_next: int = 0
    retry_after: int = 1
    reset_next: int = 0
    fail_rate: float = 0.0
    rate_limit_rate: float = 0.0
    reset_rate: float = 0.0
    seed: int | None = None
    offline_next: int = 0


_FIELDS = {field.name for field in dataclasses.fields(FaultSettings)}


@dataclass(frozen=True)
class Decision:
    """The outcome of one draw: how long to wait, then which fault (if any)."""

    delay: float
    kind: FaultKind | None


class Faults:
    """Thread-safe fault settings with their counters and random source."""

    def __init__(self, *, offline: bool = False) -> None:
        self._lock = threading.Lock()
        self._offline = offline
        self._settings = FaultSettings()
        self._chance = random.Random()
        self._jitter = random.Random()
        self.injected: Counter[str] = Counter()

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the settings; ``ValueError`` names a bad key."""
        unknown = sorted(set(changes) - self._allowed())
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        checked = {name: _checked(name, value) for name, value in changes.items()}

        with self._lock:
            merged = dataclasses.replace(self._settings, **checked)
            total = sum(getattr(merged, name) for name in _RATES)
            if total > 1.0:
                raise ValueError("fail_rate + rate_limit_rate + reset_rate exceeds 1")
            self._settings = merged
            if "seed" in checked:
                self._chance.seed(merged.seed)

    def clear(self) -> None:
        """Turn every fault off; what was injected so far stays counted."""
        with self._lock:
            self._settings = FaultSettings()
            self._chance = random.Random()

    def draw(self) -> Decision:
        """Decide the delay and fault for one API call, using up counted faults."""
        with self._lock:
            current = self._settings
            delay = current.latency_ms / 1000.0
            if current.latency_jitter_ms:
                delay += self._jitter.uniform(0.0, current.latency_jitter_ms) / 1000.0
            kind = self._next_kind(current)
            if kind is not None:
                self.injected[kind] += 1
            return Decision(delay=delay, kind=kind)

    def take_offline(self) -> bool:
        """Whether this call must answer as if its user were offline."""
        with self._lock:
            if self._settings.offline_next <= 0:
                return False
            self._settings.offline_next -= 1
            self.injected["offline"] += 1
            return True

    @property
    def fail_status(self) -> int:
        """The HTTP status an injected failure answers with."""
        with self._lock:
            return self._settings.fail_status

    @property
    def retry_after(self) -> int:
        """The Retry-After seconds an injected rate limit answers with."""
        with self._lock:
            return self._settings.retry_after

    def snapshot(self) -> dict[str, Any]:
        """The settings and the count of each fault injected so far."""
        with self._lock:
            settings = dataclasses.asdict(self._settings)
            if not self._offline:
                del settings["offline_next"]
            return {"settings": settings, "injected": dict(self.injected)}

    def _allowed(self) -> set[str]:
        return _FIELDS if self._offline else _FIELDS - {"offline_next"}

    def _next_kind(self, current: FaultSettings) -> FaultKind | None:
        for name in _COUNTED:
            left = getattr(current, name)
            if left > 0:
                setattr(current, name, left - 1)
                return _KIND_OF[name]

        if not any(getattr(current, name) for name in _RATES):
            return None
        roll = self._chance.random()
        for name in _RATES:
            roll -= getattr(current, name)
            if roll < 0:
                return _KIND_OF[name]
        return None


def _checked(name: str, value: Any) -> Any:
    """``value`` if it suits setting ``name``, else ``ValueError``."""
    if name == "seed":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int)
        ):
            raise ValueError("seed must be a whole number or null")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if name in _RATES:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
        return float(value)
    if name in ("latency_ms", "latency_jitter_ms"):
        if value < 0:
            raise ValueError(f"{name} must not be negative")
        return float(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number, 0 or more")
    if name == "fail_status" and not 400 <= value <= 599:
        raise ValueError("fail_status must be between 400 and 599")
    return value


def drop_connection(environ: Mapping[str, Any]) -> None:
    """Close the client's TCP connection at once, so it gets no HTTP answer.

    A zero linger time makes the kernel send a reset instead of the usual
    orderly close; shutting the socket down first makes the server's attempt to
    write an answer fail quietly as a dropped connection.
    """
    sock = environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        raise RuntimeError("the server does not expose the client socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # If the client went away first, the connection is gone either way.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)

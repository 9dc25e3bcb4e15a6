"""A client for the emulators' ``/_sandbox`` control endpoints.

Tests that run relay in other processes use it to seed data, inject faults and
read what the emulators received. One ``SandboxControl`` drives one emulator;
methods meant for another emulator get a 404 from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

JSONObject = dict[str, Any]


class SandboxControl:
    """Drives one emulator (Bugpilot, Zendesk or Intercom) at ``base_url``."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def state(self) -> JSONObject:
        """Everything the emulator holds (``GET /_sandbox/state``)."""
        return self._call("GET", "/state")

    def reset(self) -> None:
        """Back to the seed data, default settings and no faults."""
        self._call("POST", "/reset")

    def faults(self) -> JSONObject:
        """The fault settings and the count of faults injected so far."""
        return self._call("GET", "/faults")

    def set_faults(self, **faults: Any) -> JSONObject:
        """Merge fault settings, e.g. ``set_faults(fail_next=2, latency_ms=50)``."""
        return self._call("POST", "/faults", faults)

    def clear_faults(self) -> JSONObject:
        """Turn every fault off."""
        return self._call("DELETE", "/faults")

    def settings(self, **settings: Any) -> JSONObject:
        """Change settings such as ``report_after_polls`` or ``auto_create``."""
        if not settings:
            return self._call("GET", "/settings")
        return self._call("POST", "/settings", settings)

    def set_users(
        self,
        *,
        online: Iterable[str] = (),
        offline: Iterable[str] = (),
        all_online: bool | None = None,
    ) -> JSONObject:
        """Bugpilot: mark users online or offline, or everyone online."""
        body: JSONObject = {"online": list(online), "offline": list(offline)}
        if all_online is not None:
            body["all_online"] = all_online
        return self._call("POST", "/users", body)

    def set_online(self, users: Iterable[str]) -> JSONObject:
        """Bugpilot: mark ``users`` online."""
        return self.set_users(online=users)

    def set_offline(self, users: Iterable[str]) -> JSONObject:
        """Bugpilot: mark ``users`` offline."""
        return self.set_users(offline=users)

    def set_all_online(self, value: bool = True) -> JSONObject:
        """Bugpilot: treat every user as online (or stop doing so)."""
        return self.set_users(all_online=value)

    def add_user(self, **user: Any) -> JSONObject:
        """Zendesk: create or replace a user (id, email, name, external_id, role)."""
        return self._call("POST", "/users", user)["user"]  # type: ignore[no-any-return]

    def add_ticket(self, **ticket: Any) -> JSONObject:
        """Zendesk: create or replace a ticket (id, subject, requester_id, tags...)."""
        return self._call("POST", "/tickets", ticket)["ticket"]  # type: ignore[no-any-return]

    def add_contact(self, **contact: Any) -> JSONObject:
        """Intercom: create or replace a contact (id, email, external_id, tags...)."""
        return self._call("POST", "/contacts", contact)

    def add_conversation(self, **conversation: Any) -> JSONObject:
        """Intercom: create or replace a conversation (id, contact_id, tags...)."""
        return self._call("POST", "/conversations", conversation)

    def add_tag(self, **tag: Any) -> JSONObject:
        """Intercom: create or rename a tag (id, name)."""
        return self._call("POST", "/tags", tag)

    def wait_for(
        self,
        predicate: Callable[[JSONObject], bool],
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> JSONObject:
        """Poll the state until ``predicate`` holds; TimeoutError after ``timeout``."""
        deadline = clock() + timeout
        while True:
            state = self.state()
            if predicate(state):
                return state
            if clock() >= deadline:
                raise TimeoutError(f"{self.base_url}: condition not met in {timeout}s")
            sleep(interval)

    def _call(
        self, method: str, path: str, body: JSONObject | None = None
    ) -> JSONObject:
        response = requests.request(
            method,
            f"{self.base_url}/_sandbox{path}",
            json=body,
            timeout=self.timeout,
        )
        response.raise_for_status()
        result = response.json()
        assert isinstance(result, dict)
        return result

"""Helpers for the delivery tests: an emulated deployment in one process.

``Desk`` bundles the emulators, a SQLite store and the clients a worker needs,
with the emulators' records read straight from their in-process state. ``Dies``,
``Stalls`` and ``Holds`` wrap a client so that a worker dies (as with SIGKILL),
stalls or waits at an exact point of a job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.bugpilot import BugpilotClient
from relay.config import IntercomSettings, ZendeskSettings
from relay.model import Requester, TagEvent
from relay.providers.intercom import IntercomClient
from relay.providers.zendesk import ZendeskClient
from relay.rules import Rule
from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
    Sandbox,
)
from relay.sandbox.intercom import SEED_CONTACT_ID, SEED_TAG_ID
from relay.sandbox.zendesk import JANE_ID
from relay.store import Store
from relay.worker import Backoff, Worker

FINISHED = ("done", "dead")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the worker that raised it."""


class Dies:
    """A client that kills its worker in ``method``, before or after the call."""

    def __init__(self, inner: Any, method: str, *, after: bool) -> None:
        self._inner = inner
        self._method = method
        self._after = after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name != self._method or self.fired:
            return value

        def dying(*args: Any, **kwargs: Any) -> Any:
            self.fired = True
            if self._after:
                value(*args, **kwargs)
            raise Killed(name)

        return dying


class Stalls:
    """A client whose ``method`` runs ``meanwhile`` first, as if the worker froze."""

    def __init__(self, inner: Any, method: str, meanwhile: Callable[[], None]) -> None:
        self._inner = inner
        self._method = method
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name != self._method:
            return value

        def stalling(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            self._meanwhile()
            return result

        return stalling


class Holds:
    """A client whose ``method`` answers only once the test calls ``release``."""

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._method = method
        self._released = threading.Event()
        self.entered = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name != self._method:
            return value

        def holding(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            self.entered.set()
            if not self._released.wait(timeout=30):
                raise RuntimeError(f"{name} held for 30 seconds")
            return result

        return holding


def make_rule(**overrides: Any) -> Rule:
    """The screenshot rule of the delivery tests, with ``overrides``."""
    values: dict[str, Any] = {
        "name": "screenshot",
        "tag": "bugpilot_screenshot",
        "action": "upload-screenshot",
        "user": "email",
        "description": "Ticket {ticket_id}: {subject}",
        "note": "Bugpilot screenshot: {session_info_url}",
        "remove_tag": True,
    }
    values.update(overrides)
    return Rule(**values)


@dataclass
class Desk:
    """Emulators, a store and clients; everything a worker needs, in-process."""

    sandbox: Sandbox
    store: Store
    sleeps: list[float] = field(default_factory=list)

    # -- clients and workers ----------------------------------------------------

    def bugpilot_client(self, **overrides: Any) -> BugpilotClient:
        options: dict[str, Any] = {
            "api_url": self.sandbox.bugpilot_url,
            "api_key": SANDBOX_BUGPILOT_API_KEY,
            "workspace_id": SANDBOX_WORKSPACE_ID,
            "sleep": self.sleeps.append,
        }
        options.update(overrides)
        return BugpilotClient(**options)

    def zendesk_client(self, *, token: str = SANDBOX_ZENDESK_TOKEN) -> ZendeskClient:
        settings = ZendeskSettings(
            url=self.sandbox.zendesk_url,
            webhook_secrets=(SANDBOX_ZENDESK_SECRET,),
            email=SANDBOX_ZENDESK_EMAIL,
            api_token=token,
        )
        return ZendeskClient(settings, sleep=self.sleeps.append)

    def intercom_client(self) -> IntercomClient:
        settings = IntercomSettings(
            api_url=self.sandbox.intercom_url,
            access_token=SANDBOX_INTERCOM_TOKEN,
            client_secrets=(SANDBOX_INTERCOM_SECRET,),
            admin_id=SANDBOX_INTERCOM_ADMIN_ID,
        )
        return IntercomClient(settings, sleep=self.sleeps.append)

    def worker(
        self,
        *,
        bugpilot: Any = None,
        zendesk: Any = None,
        intercom: Any = None,
        **options: Any,
    ) -> Worker:
        settings: dict[str, Any] = {
            "threads": 4,
            "lease": 30.0,
            "backoff": Backoff(base=0.01, cap=0.05),
            "poll_interval": 0.01,
        }
        settings.update(options)
        return Worker(
            self.store,
            bugpilot=bugpilot or self.bugpilot_client(),
            helpdesks={
                "zendesk": zendesk or self.zendesk_client(),
                "intercom": intercom or self.intercom_client(),
            },
            **settings,
        )

    # -- jobs -----------------------------------------------------------------

    def enqueue(
        self,
        rule: Rule | None = None,
        *,
        provider: str = "zendesk",
        target: str = "1001",
        requester: Requester | None = None,
        created_at: float | None = None,
    ) -> int:
        """Store one event that fires ``rule``; returns the job id."""
        rule = rule or make_rule()
        if provider == "zendesk":
            self.sandbox.zendesk.add_ticket(
                id=int(target), subject="Cannot log in", tags=[rule.tag]
            )
            event = TagEvent(
                provider="zendesk",
                delivery_id=str(uuid.uuid4()),
                target_kind="ticket",
                target_id=target,
                tags_added=(rule.tag,),
                requester=requester or Requester(remote_id=str(JANE_ID)),
                subject="Cannot log in",
            )
        else:
            self.sandbox.intercom.add_conversation(
                id=target, contact_id=SEED_CONTACT_ID, tags=[SEED_TAG_ID]
            )
            event = TagEvent(
                provider="intercom",
                delivery_id=f"notif_{uuid.uuid4()}",
                target_kind="conversation",
                target_id=target,
                tags_added=(rule.tag,),
                requester=requester
                or Requester(email="joe@example.com", remote_id=SEED_CONTACT_ID),
                tag_ids=((rule.tag, SEED_TAG_ID),),
            )
        result = self.store.ingest(
            event, [(rule.tag, rule)], cooldown=0, now=created_at
        )
        [job_id] = result.job_ids
        return job_id

    def job(self, job_id: int) -> dict[str, Any]:
        row = self.store.get_job(job_id)
        assert row is not None
        return row

    def finish(
        self, worker: Worker, *job_ids: int, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Run ``worker`` until every job is done or dead; return the jobs."""
        deadline = time.monotonic() + timeout
        while True:
            worker.run_until_idle()
            rows = [self.job(job_id) for job_id in job_ids]
            if all(row["state"] in FINISHED for row in rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not finished: {rows}")
            time.sleep(0.01)

    def make_due(self) -> None:
        """Bring every waiting job's next attempt forward to now."""
        with self.store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET next_attempt_at = 0")

    def expire_leases(self) -> None:
        """Let every lease run out, as when its holder died."""
        with self.store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET lease_until = 0")

    # -- what the emulators recorded --------------------------------------------

    def bugpilot_calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.sandbox.bugpilot.state()["actions"]
        return calls

    def captures(self) -> list[dict[str, Any]]:
        return [call for call in self.bugpilot_calls() if call["status"] == 200]

    def notes(self, provider: str = "zendesk", target: str = "1001") -> list[str]:
        """The internal notes on a ticket or conversation, oldest first."""
        if provider == "zendesk":
            ticket = self.sandbox.zendesk.state()["tickets"][target]
            return [c["body"] for c in ticket["comments"] if c["public"] is False]
        conversation = self.sandbox.intercom.state()["conversations"][target]
        notes: list[str] = conversation["note_bodies"]
        return notes

    def tags(self, target: str = "1001") -> list[str]:
        tags: list[str] = self.sandbox.zendesk.state()["tickets"][target]["tags"]
        return tags

    def faults(self, emulator: str, **settings: Any) -> None:
        getattr(self.sandbox, emulator).faults.configure(settings)

    def requests(self, emulator: str) -> dict[str, int]:
        counts: dict[str, int] = getattr(self.sandbox, emulator).state()["requests"]
        return counts


def steps(job: dict[str, Any]) -> list[tuple[str, str]]:
    """(step, outcome) of each attempt in a job's history."""
    return [(item["step"], item["outcome"]) for item in job["history"]]


def containing(texts: Iterable[str], part: str) -> list[str]:
    return [text for text in texts if part in text]

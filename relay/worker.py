"""The delivery loop: claim due jobs, capture with Bugpilot, write the note.

One dispatcher thread claims as many due jobs as there are idle threads, in one
transaction, and hands them to a thread pool. A keeper thread extends the leases
of the jobs in hand. Each job moves through its steps:

    pending  look up the customer, ask Bugpilot for the action, store the
             sessionInfoUrl (the job becomes ``noting``)
    noting   write the internal note, remove the trigger tag, and when the rule
             follows the report, poll for it and write a second note
    done / dead

A job is only ever sent to Bugpilot while it is ``pending``, and the
sessionInfoUrl is committed before the note step starts, so a failed note never
causes a second capture. A job whose earlier holder died while it may have been
talking to Bugpilot is not sent again: it is dead with ``capture_in_doubt``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from relay import metrics
from relay.bugpilot import BugpilotClient
from relay.config import Settings
from relay.errors import (
    DeliveryError,
    PermanentError,
    TransientError,
    UserNotConnected,
)
from relay.logging import get_logger
from relay.model import Helpdesk, Requester, Target
from relay.providers.intercom import IntercomClient
from relay.providers.zendesk import ZendeskClient
from relay.rules import render
from relay.store import STORE_ERRORS, Job, Store, new_owner

log = get_logger("relay.worker")

REPORT_BUDGET = 3600.0
"""How long a rule with ``follow_report`` waits for Bugpilot's report."""


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff between attempts, in seconds."""

    base: float = 5.0
    cap: float = 900.0

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        exponential = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        delay: float = exponential * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


def build_helpdesks(settings: Settings) -> dict[str, Helpdesk]:
    """A client for each configured helpdesk."""
    helpdesks: dict[str, Helpdesk] = {}
    if settings.zendesk is not None:
        helpdesks["zendesk"] = ZendeskClient(settings.zendesk)
    if settings.intercom is not None:
        helpdesks["intercom"] = IntercomClient(settings.intercom)
    return helpdesks


def build_bugpilot(settings: Settings) -> BugpilotClient:
    """The Bugpilot client from the settings."""
    return BugpilotClient(
        api_url=settings.bugpilot_api_url,
        api_key=settings.bugpilot_api_key,
        workspace_id=settings.bugpilot_workspace_id,
        rate_per_minute=settings.bugpilot_rate_limit,
    )


class Worker:
    """Runs jobs from the store until told to stop."""

    def __init__(
        self,
        store: Store,
        *,
        bugpilot: BugpilotClient,
        helpdesks: Mapping[str, Helpdesk],
        threads: int = 8,
        lease: float = 60.0,
        max_job_age: float = 86400.0,
        backoff: Backoff | None = None,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bugpilot = bugpilot
        self.helpdesks = dict(helpdesks)
        self.threads = threads
        self.lease = lease
        self.max_job_age = max_job_age
        self.backoff = backoff or Backoff()
        self.poll_interval = poll_interval
        self.clock = clock
        self.owner = new_owner()
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    # -- the loop ---------------------------------------------------------------

    def run(self, stop: threading.Event, *, drain_timeout: float = 30.0) -> None:
        """Claim and run jobs until ``stop`` is set, then drain and return."""
        log.info("worker started", owner=self.owner, threads=self.threads)
        keeper = threading.Thread(target=self._keep_leases, args=(stop,), daemon=True)
        keeper.start()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="relay-job")
        try:
            while not stop.is_set():
                claimed = self._claim_batch()
                for job in claimed:
                    pool.submit(self._run_one, job)
                if not claimed:
                    stop.wait(self.poll_interval)
        finally:
            self._drain(pool, drain_timeout)
        log.info("worker stopped", owner=self.owner)

    def run_until_idle(self, *, timeout: float = 60.0) -> None:
        """Run jobs until none is due (tests and ``relay demo`` use this)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.store.claim(self.owner, limit=self.threads, lease=self.lease)
            if not jobs:
                return
            for job in jobs:
                self.process(job)

    def _claim_batch(self) -> list[Job]:
        with self._lock:
            while len(self._held) >= self.threads:
                self._idle.wait(1.0)
            free = self.threads - len(self._held)
        try:
            jobs = self.store.claim(self.owner, limit=free, lease=self.lease)
        except STORE_ERRORS as exc:
            log.warning("claim failed", error=type(exc).__name__)
            return []
        with self._lock:
            self._held.update(job.id for job in jobs)
        return jobs

    def _run_one(self, job: Job) -> None:
        try:
            self.process(job)
        except Exception:
            log.exception("job crashed", job_id=job.id)
            self._after_crash(job)
        finally:
            with self._lock:
                self._held.discard(job.id)
                self._idle.notify()

    def _after_crash(self, job: Job) -> None:
        # Leave capture_started_at alone: if the crash came after the Bugpilot
        # call, the next claim must see the capture as in doubt.
        try:
            self.store.update(
                job.id,
                self.owner,
                next_attempt_at=self.clock() + self.backoff.delay(job.attempts),
                last_error="internal_error",
                release=True,
                attempt={"step": job.state, "outcome": "error", "detail": "crash"},
            )
        except STORE_ERRORS:
            log.warning("could not reschedule crashed job", job_id=job.id)

    def _keep_leases(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            with self._lock:
                held = list(self._held)
            try:
                self.store.extend_lease(held, self.owner, self.lease)
            except STORE_ERRORS as exc:
                log.warning("lease extension failed", error=type(exc).__name__)

    def _drain(self, pool: ThreadPoolExecutor, timeout: float) -> None:
        pool.shutdown(wait=False, cancel_futures=False)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._held and time.monotonic() < deadline:
                self._idle.wait(0.2)
            left = list(self._held)
        for job_id in left:
            # Still running past the timeout: give the lease up so another worker
            # takes the job once this process exits.
            self.store.update(job_id, self.owner, release=True)
        if left:
            log.warning("jobs released unfinished", jobs=left)

    # -- one job ----------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Take one claimed job as far as it can go now."""
        helpdesk = self.helpdesks.get(job.provider)
        if helpdesk is None:
            self._dead(job, "provider_disabled", "the provider is not configured")
            return
        if self.clock() - job.created_at > self.max_job_age:
            self._dead(job, "retry_budget_exhausted", "the job ran out of time")
            return
        if job.state == "pending":
            job = self._capture(job, helpdesk)
        if job.state == "noting":
            self._note(job, helpdesk)

    def _capture(self, job: Job, helpdesk: Helpdesk) -> Job:
        if job.in_doubt:
            self._dead(
                job,
                "capture_in_doubt",
                "a worker stopped while asking Bugpilot; not asking twice",
                helpdesk=helpdesk,
            )
            return job

        started = time.perf_counter()
        try:
            user_id = self._user_id(job, helpdesk)
            if user_id is None:
                self._dead(
                    job,
                    "missing_user_id",
                    f"the customer has no {job.rule.user}",
                    helpdesk=helpdesk,
                    clear_capture=True,
                )
                return job
            description = None
            if job.rule.description:
                description = render(job.rule.description, _values(job, user_id))
            capture = self.bugpilot.request_action(
                action=job.action, user_id=user_id, description=description
            )
        except UserNotConnected as exc:
            self._offline(job, helpdesk, exc, started)
            return job
        except DeliveryError as exc:
            self._failed(job, "capture", exc, started, helpdesk)
            return job

        recorded = self.store.update(
            job.id,
            self.owner,
            state="noting",
            user_id=user_id,
            session_info_url=capture.session_info_url,
            capture_started_at=None,
            last_error=None,
            attempt=_attempt("capture", "ok", started),
        )
        self._log_step(job, "capture", "ok", started)
        if not recorded:
            log.warning("lease lost after capture", job_id=job.id)
            return job
        return _replace(
            job,
            state="noting",
            user_id=user_id,
            session_info_url=capture.session_info_url,
        )

    def _note(self, job: Job, helpdesk: Helpdesk) -> None:
        target = _target(job)
        started = time.perf_counter()
        try:
            if job.noted_at is None:
                body = render(job.rule.note, _values(job, job.user_id))
                self._write_once(job, helpdesk, target, body, job.session_info_url)
                metrics.NOTES.labels(job.provider, "ok").inc()
                if job.rule.remove_tag:
                    self._remove_tag(job, helpdesk, target)
                noted_at = self.clock()
                if job.rule.follow_report:
                    self.store.update(
                        job.id,
                        self.owner,
                        noted_at=noted_at,
                        next_attempt_at=noted_at + self.backoff.base,
                        release=True,
                        attempt=_attempt("note", "ok", started),
                    )
                    self._log_step(job, "note", "ok", started)
                    return
                self._done(job, "note", started)
                return
            self._follow_report(job, helpdesk, target, started)
        except DeliveryError as exc:
            metrics.NOTES.labels(job.provider, "failed").inc()
            self._failed(job, "note", exc, started, helpdesk)

    def _follow_report(
        self, job: Job, helpdesk: Helpdesk, target: Target, started: float
    ) -> None:
        assert job.session_info_url is not None
        report_url = self.bugpilot.report_url(job.session_info_url)
        if report_url is None:
            waited = self.clock() - (job.noted_at or self.clock())
            if waited > REPORT_BUDGET:
                self._done(job, "report", started, outcome="no_report")
                return
            self._reschedule(job, "report", "waiting", started, None)
            return
        job = _replace(job, report_url=report_url)
        body = render(job.rule.report_note, _values(job, job.user_id))
        self._write_once(job, helpdesk, target, body, report_url)
        metrics.NOTES.labels(job.provider, "ok").inc()
        self._done(job, "report", started, report_url=report_url)

    def _write_once(
        self, job: Job, helpdesk: Helpdesk, target: Target, body: str, key: str | None
    ) -> None:
        # A job claimed before may have had its note written by a worker that
        # died before recording it: look before writing again.
        if job.attempts > 1 and key and helpdesk.note_exists(target, key):
            log.info("note already present", job_id=job.id)
            return
        helpdesk.write_note(target, body)

    def _remove_tag(self, job: Job, helpdesk: Helpdesk, target: Target) -> None:
        try:
            helpdesk.remove_tag(target)
        except DeliveryError as exc:
            # The note is written; a tag left on the ticket is not worth a retry
            # that could write the note twice.
            log.warning(
                "tag removal failed", job_id=job.id, reason=exc.reason, tag=job.tag
            )

    # -- outcomes ---------------------------------------------------------------

    def _user_id(self, job: Job, helpdesk: Helpdesk) -> str | None:
        requester = Requester(**job.requester)
        field = "email" if job.rule.user == "email" else "external_id"
        value = getattr(requester, field)
        if not value and requester.remote_id:
            value = getattr(helpdesk.lookup_requester(requester), field)
        return value or None

    def _offline(
        self, job: Job, helpdesk: Helpdesk, exc: UserNotConnected, started: float
    ) -> None:
        now = self.clock()
        since = job.offline_since or now
        if now - since >= job.rule.wait_for_user:
            self._dead(
                job,
                "user_not_connected",
                "the user was not online",
                helpdesk=helpdesk,
                note=job.rule.offline_note,
                clear_capture=True,
                exc=exc,
            )
            return
        delay = min(self.backoff.delay(job.attempts), 60.0)
        self.store.update(
            job.id,
            self.owner,
            offline_since=since,
            capture_started_at=None,
            next_attempt_at=now + delay,
            last_error="user_not_connected",
            release=True,
            attempt=_attempt("capture", "offline", started, exc),
        )
        self._log_step(job, "capture", "offline", started, retry_in=round(delay, 2))

    def _failed(
        self,
        job: Job,
        step: str,
        exc: DeliveryError,
        started: float,
        helpdesk: Helpdesk,
    ) -> None:
        if isinstance(exc, PermanentError):
            self._dead(
                job,
                exc.reason,
                str(exc),
                helpdesk=helpdesk if exc.destination == "bugpilot" else None,
                clear_capture=step == "capture",
                exc=exc,
                step=step,
                started=started,
            )
            return
        self._reschedule(job, step, "retry", started, exc)

    def _reschedule(
        self,
        job: Job,
        step: str,
        outcome: str,
        started: float,
        exc: TransientError | DeliveryError | None,
    ) -> None:
        delay = self.backoff.delay(job.attempts, exc.retry_after if exc else None)
        next_at = self.clock() + delay
        if next_at - job.created_at > self.max_job_age and step != "report":
            self._dead(
                job,
                "retry_budget_exhausted",
                str(exc) if exc else "out of time",
                helpdesk=self.helpdesks.get(job.provider)
                if step == "capture"
                else None,
                clear_capture=step == "capture",
                exc=exc,
                step=step,
                started=started,
            )
            return
        values: dict[str, Any] = {}
        if step == "capture":
            values["capture_started_at"] = None
        self.store.update(
            job.id,
            self.owner,
            next_attempt_at=next_at,
            last_error=exc.reason if exc else outcome,
            release=True,
            attempt=_attempt(step, outcome, started, exc),
            **values,
        )
        self._log_step(
            job,
            step,
            outcome,
            started,
            reason=exc.reason if exc else None,
            retry_in=round(delay, 2),
        )

    def _done(
        self, job: Job, step: str, started: float, *, outcome: str = "ok", **values: Any
    ) -> None:
        self.store.update(
            job.id,
            self.owner,
            state="done",
            release=True,
            attempt=_attempt(step, outcome, started),
            **values,
        )
        metrics.JOB_ATTEMPTS.labels("done").observe(job.attempts)
        self._log_step(job, step, outcome, started, state="done")

    def _dead(
        self,
        job: Job,
        reason: str,
        detail: str,
        *,
        helpdesk: Helpdesk | None = None,
        note: str | None = None,
        clear_capture: bool = False,
        exc: DeliveryError | None = None,
        step: str = "capture",
        started: float | None = None,
    ) -> None:
        """End the job; tell the agent on the ticket why, where that is possible."""
        started = time.perf_counter() if started is None else started
        if helpdesk is not None:
            template = note or (
                "Relay could not request a Bugpilot {action} for this ticket: {error}"
            )
            values = _values(job, job.user_id)
            values["error"] = reason.replace("_", " ")
            try:
                helpdesk.write_note(_target(job), render(template, values))
                metrics.NOTES.labels(job.provider, "failure_note").inc()
            except DeliveryError as note_exc:
                log.warning(
                    "failure note not written", job_id=job.id, reason=note_exc.reason
                )
        values_db: dict[str, Any] = {}
        if clear_capture:
            values_db["capture_started_at"] = None
        self.store.update(
            job.id,
            self.owner,
            state="dead",
            dead_reason=reason,
            last_error=detail[:500],
            release=True,
            attempt=_attempt(step, "dead", started, exc, detail=reason),
            **values_db,
        )
        metrics.JOB_ATTEMPTS.labels("dead").observe(job.attempts)
        self._log_step(job, step, "dead", started, reason=reason, state="dead")

    def _log_step(
        self, job: Job, step: str, outcome: str, started: float, **fields: Any
    ) -> None:
        level = log.warning if outcome in ("dead", "retry") else log.info
        level(
            "job step",
            job_id=job.id,
            rule=job.rule.name,
            action=job.action,
            attempt=job.attempts,
            step=step,
            outcome=outcome,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **fields,
        )


def _attempt(
    step: str,
    outcome: str,
    started: float,
    exc: DeliveryError | None = None,
    *,
    detail: str | None = None,
) -> dict[str, Any]:
    return {
        "step": step,
        "outcome": outcome,
        "http_status": exc.http_status if exc else None,
        "error_code": (exc.error_code or exc.reason) if exc else None,
        "detail": detail or (str(exc)[:500] if exc else None),
        "duration_ms": int((time.perf_counter() - started) * 1000),
    }


def _target(job: Job) -> Target:
    return Target(
        provider=job.provider,
        kind=job.target_kind,  # type: ignore[arg-type]
        id=job.target_id,
        tag=job.tag,
        tag_id=job.tag_id,
    )


def _values(job: Job, user_id: str | None) -> dict[str, object]:
    return {
        "ticket_id": job.target_id,
        "provider": job.provider,
        "tag": job.tag,
        "rule": job.rule.name,
        "action": job.action,
        "user_id": user_id or "",
        "subject": job.subject,
        "session_info_url": job.session_info_url or "",
        "report_url": job.report_url or "",
        "error": "",
    }


def _replace(job: Job, **changes: Any) -> Job:
    import dataclasses

    return dataclasses.replace(job, **changes)

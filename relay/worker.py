"""The delivery loop: claim due jobs, capture with Bugpilot, write the note.

One dispatcher thread claims as many due jobs as there are idle job threads, in
one transaction, and hands them over. A keeper thread extends the leases of the
jobs in hand. Each job moves through its steps:

    pending  look up the customer, ask Bugpilot for the action, store the
             sessionInfoUrl (the job becomes ``noting``)
    noting   write the internal note, remove the trigger tag, and when the rule
             follows the report, poll for it and write a second note
    done / dead

A worker may die at any moment; four records in the store make that safe:

- ``capture_started_at`` is set, under the lease, right before the Bugpilot
  call, and cleared by the write that records the answer. A job claimed with it
  still set had a holder that died while it may have been talking to Bugpilot:
  it is dead with ``capture_in_doubt`` and never sent again.
- the sessionInfoUrl is committed before the note step starts, so a failed or
  interrupted note never causes a second capture;
- a job claimed in ``noting`` may have had its note written by a holder that
  died before recording it, so the worker looks for the note before writing;
- a job that ends with a note saying why it failed records its reason first
  (``dead_reason``, with ``noted_at`` set while still pending), then writes the
  note, then becomes ``dead``; a holder that dies in between leaves the note to
  the next one, which also looks before writing.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay import metrics
from relay.bugpilot import BugpilotClient
from relay.config import Settings
from relay.errors import (
    DeliveryError,
    PermanentError,
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
OFFLINE_RETRY_CAP = 60.0
"""The longest pause between two tries while waiting for an offline user."""

FAILURE_NOTE = "Relay could not request a Bugpilot {action} for this ticket: {error}."
IN_DOUBT_NOTE = (
    "Relay stopped while asking Bugpilot for {action} and cannot tell whether "
    "it was captured, so it will not ask twice. Add the tag {tag} again to "
    "request a new capture."
)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff between attempts, in seconds."""

    base: float = 5.0
    cap: float = 900.0

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """The pause before the next attempt; at least ``retry_after`` if given."""
        exponential = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        delay: float = exponential * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class LeaseLost(Exception):
    """The job's lease passed to another worker or was given up: hands off."""


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
        report_budget: float = REPORT_BUDGET,
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
        self.report_budget = report_budget
        self.clock = clock
        self.owner = new_owner()
        self._held: dict[int, Job] = {}
        """The jobs in hand by id, each as this worker claimed it."""
        self._given_up: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    # -- the loop ---------------------------------------------------------------

    def run(self, stop: threading.Event, *, drain_timeout: float = 30.0) -> None:
        """Claim and run jobs until ``stop`` is set, then drain and return.

        Jobs still running when ``drain_timeout`` has passed are released for
        another worker. Job threads are daemons, so a job stuck in a call
        cannot keep the process from exiting.
        """
        log.info("worker started", owner=self.owner, threads=self.threads)
        work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        for number in range(self.threads):
            threading.Thread(
                target=self._serve,
                args=(work,),
                name=f"relay-job-{number}",
                daemon=True,
            ).start()
        keeper_stop = threading.Event()
        threading.Thread(
            target=self._keep_leases,
            args=(keeper_stop,),
            name="relay-leases",
            daemon=True,
        ).start()
        try:
            while not stop.is_set():
                free = self._free_threads(stop)
                if not free:
                    continue
                claimed = self._claim(free)
                for job in claimed:
                    work.put(job)
                if len(claimed) < free:
                    stop.wait(self.poll_interval)
        finally:
            self._drain(drain_timeout)
            keeper_stop.set()
            for _ in range(self.threads):
                work.put(None)
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

    def _free_threads(self, stop: threading.Event) -> int:
        with self._lock:
            if len(self._held) >= self.threads and not stop.is_set():
                self._idle.wait(self.poll_interval)
            return max(self.threads - len(self._held), 0)

    def _claim(self, limit: int) -> list[Job]:
        try:
            jobs = self.store.claim(self.owner, limit=limit, lease=self.lease)
        except STORE_ERRORS as exc:
            log.warning("claim failed", error=type(exc).__name__)
            return []
        with self._lock:
            self._held.update((job.id, job) for job in jobs)
            self._given_up.difference_update(job.id for job in jobs)
        return jobs

    def _serve(self, work: queue.SimpleQueue[Job | None]) -> None:
        while (job := work.get()) is not None:
            self._run_one(job)

    def _run_one(self, job: Job) -> None:
        try:
            self.process(job)
        except Exception:
            log.exception("job crashed", job_id=job.id)
            self._after_crash(job)
        finally:
            with self._lock:
                self._held.pop(job.id, None)
                self._given_up.discard(job.id)
                self._idle.notify_all()

    def _after_crash(self, job: Job) -> None:
        # Leave capture_started_at alone: if the crash came during the Bugpilot
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
                held = [
                    job
                    for job_id, job in self._held.items()
                    if job_id not in self._given_up
                ]
            if not held:
                continue
            try:
                ids = [job.id for job in held]
                if self.store.extend_lease(ids, self.owner, self.lease) < len(ids):
                    self._find_lost(held)
            except STORE_ERRORS as exc:
                log.warning("lease extension failed", error=type(exc).__name__)

    def _find_lost(self, held: list[Job]) -> None:
        """Give up jobs whose lease another worker took (this one stalled)."""
        lost = [
            job
            for job in held
            if not self.store.extend_lease([job.id], self.owner, self.lease)
        ]
        with self._lock:
            # A job that ended meanwhile released its lease, which is no loss;
            # one claimed again since is a new holding, checked next time.
            ids = [job.id for job in lost if self._held.get(job.id) is job]
            self._given_up.update(ids)
        if ids:
            log.warning("leases lost", jobs=ids)

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._held and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(min(left, 0.2))
            unfinished = sorted(self._held)
            self._given_up.update(unfinished)
        for job_id in unfinished:
            # Still running past the timeout: give the lease up so that another
            # worker takes the job at once. A capture cut off here stays marked
            # in doubt, and a note cut off here is looked for before rewriting.
            try:
                self.store.update(
                    job_id,
                    self.owner,
                    release=True,
                    attempt={"step": "drain", "outcome": "released"},
                )
            except STORE_ERRORS:
                log.warning("could not release job", job_id=job_id)
        if unfinished:
            log.warning("jobs released unfinished", jobs=unfinished)

    # -- one job ----------------------------------------------------------------

    def process(self, job: Job) -> None:
        """Take one claimed job as far as it can go now."""
        try:
            self._process(job)
        except LeaseLost:
            log.warning("lease lost", job_id=job.id, state=job.state)

    def _process(self, job: Job) -> None:
        helpdesk = self.helpdesks.get(job.provider)
        if helpdesk is None:
            self._dead(job, "provider_disabled", "the provider is not configured")
            return
        if job.state == "pending" and job.noted_at is not None:
            self._finish_failure(job, helpdesk)
            return
        if job.in_doubt:
            self._dead(
                job,
                "capture_in_doubt",
                "a worker stopped while asking Bugpilot; not asking twice",
                helpdesk=helpdesk,
            )
            return
        if self.clock() - job.created_at > self.max_job_age:
            self._out_of_time(job, helpdesk)
            return

        claimed_in = job.state
        if job.state == "pending":
            job = self._capture(job, helpdesk)
        if job.state == "noting":
            self._note(job, helpdesk, look_first=claimed_in == "noting")

    def _out_of_time(self, job: Job, helpdesk: Helpdesk) -> None:
        started = time.perf_counter()
        if job.state == "noting" and job.noted_at is not None:
            # Capture and note are delivered; only the report never came.
            self._done(job, "report", started, outcome="no_report")
            return
        self._dead(
            job,
            "retry_budget_exhausted",
            "the job ran out of time",
            helpdesk=helpdesk,
            step="capture" if job.state == "pending" else "note",
        )

    def _capture(self, job: Job, helpdesk: Helpdesk) -> Job:
        started = time.perf_counter()
        try:
            user_id = self._user_id(job, helpdesk)
            if user_id is None:
                self._dead(
                    job,
                    "missing_user_id",
                    f"the customer has no {job.rule.user}",
                    helpdesk=helpdesk,
                    started=started,
                )
                return job
            job = dataclasses.replace(job, user_id=user_id)
            description = None
            if job.rule.description:
                description = render(job.rule.description, _values(job, user_id))

            # From here until the answer is recorded, a death leaves the
            # capture in doubt; the write also proves the lease is still held.
            self._prove_lease(job, capture_started_at=self.clock())
            capture = self.bugpilot.request_action(
                action=job.action, user_id=user_id, description=description
            )
        except UserNotConnected as exc:
            self._offline(job, helpdesk, exc, started)
            return job
        except DeliveryError as exc:
            self._failed(job, "capture", exc, started, helpdesk)
            return job

        self._update(
            job,
            state="noting",
            user_id=user_id,
            session_info_url=capture.session_info_url,
            capture_started_at=None,
            offline_since=None,
            last_error=None,
            attempt=_attempt("capture", "ok", started),
        )
        self._log_step(job, "capture", "ok", started)
        return dataclasses.replace(
            job,
            state="noting",
            user_id=user_id,
            session_info_url=capture.session_info_url,
        )

    def _user_id(self, job: Job, helpdesk: Helpdesk) -> str | None:
        requester = Requester(**job.requester)
        field = "email" if job.rule.user == "email" else "external_id"
        value = getattr(requester, field)
        if not value and requester.remote_id:
            value = getattr(helpdesk.lookup_requester(requester), field)
        return value or None

    def _note(self, job: Job, helpdesk: Helpdesk, *, look_first: bool) -> None:
        if job.noted_at is not None:
            self._follow_report(job, helpdesk)
            return

        started = time.perf_counter()
        target = _target(job)
        body = render(job.rule.note, _values(job, job.user_id))
        try:
            if self._write_note(
                job,
                helpdesk,
                target,
                body,
                key=job.session_info_url,
                look_first=look_first,
            ):
                metrics.NOTES.labels(job.provider, "ok").inc()
        except DeliveryError as exc:
            metrics.NOTES.labels(job.provider, "failed").inc()
            self._failed(job, "note", exc, started, helpdesk)
            return
        if job.rule.remove_tag:
            self._remove_tag(job, helpdesk, target)

        if job.rule.follow_report:
            noted_at = self.clock()
            self._update(
                job,
                noted_at=noted_at,
                last_error=None,
                next_attempt_at=noted_at + self.backoff.delay(1),
                release=True,
                attempt=_attempt("note", "ok", started),
            )
            self._log_step(job, "note", "ok", started)
            return
        self._done(job, "note", started)

    def _follow_report(self, job: Job, helpdesk: Helpdesk) -> None:
        started = time.perf_counter()
        assert job.session_info_url is not None
        try:
            # BugpilotClient.report_url refuses a URL off the Bugpilot host.
            report_url = self.bugpilot.report_url(job.session_info_url)
        except DeliveryError as exc:
            self._report_failed(job, exc, started)
            return
        if report_url is None:
            if self._report_time_left(job) <= 0:
                self._done(job, "report", started, outcome="no_report")
                return
            self._reschedule(job, "report", "waiting", started, None)
            return

        job = dataclasses.replace(job, report_url=report_url)
        body = render(job.rule.report_note, _values(job, job.user_id))
        try:
            # Always a later claim than the first note: an earlier holder may
            # have written this one already.
            if self._write_note(
                job, helpdesk, _target(job), body, key=report_url, look_first=True
            ):
                metrics.NOTES.labels(job.provider, "ok").inc()
        except DeliveryError as exc:
            metrics.NOTES.labels(job.provider, "failed").inc()
            self._report_failed(job, exc, started)
            return
        self._done(job, "report", started, report_url=report_url)

    def _report_failed(self, job: Job, exc: DeliveryError, started: float) -> None:
        if isinstance(exc, PermanentError):
            self._dead(job, exc.reason, str(exc), exc=exc, step="report")
            return
        if self._report_time_left(job) <= 0:
            self._done(job, "report", started, outcome="no_report")
            return
        self._reschedule(job, "report", "retry", started, exc)

    def _report_time_left(self, job: Job) -> float:
        noted_at = job.noted_at if job.noted_at is not None else self.clock()
        ends = min(noted_at + self.report_budget, job.created_at + self.max_job_age)
        return ends - self.clock()

    def _write_note(
        self,
        job: Job,
        helpdesk: Helpdesk,
        target: Target,
        body: str,
        *,
        key: str | None,
        look_first: bool,
    ) -> bool:
        """Write ``body`` unless ``look_first`` finds a note containing ``key``."""
        if look_first and key and helpdesk.note_exists(target, key):
            log.info("note already present", job_id=job.id)
            return False
        self._prove_lease(job)
        helpdesk.write_note(target, body)
        return True

    def _remove_tag(self, job: Job, helpdesk: Helpdesk, target: Target) -> None:
        try:
            helpdesk.remove_tag(target)
        except DeliveryError as exc:
            # The note is written; a tag left on the ticket is not worth a retry.
            log.warning(
                "tag removal failed", job_id=job.id, reason=exc.reason, tag=job.tag
            )

    # -- outcomes ---------------------------------------------------------------

    def _offline(
        self, job: Job, helpdesk: Helpdesk, exc: UserNotConnected, started: float
    ) -> None:
        now = self.clock()
        since = job.offline_since if job.offline_since is not None else now
        waits_until = min(
            since + job.rule.wait_for_user, job.created_at + self.max_job_age
        )
        if now >= waits_until:
            self._dead(
                job,
                "user_not_connected",
                "the user was not online",
                helpdesk=helpdesk,
                note=job.rule.offline_note,
                exc=exc,
                started=started,
            )
            return
        # The last try falls on the end of the wait, not after it.
        delay = min(
            self.backoff.delay(job.attempts), OFFLINE_RETRY_CAP, waits_until - now
        )
        self._update(
            job,
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
            # The agent hears about a refused capture; a helpdesk that refuses
            # the note would refuse a failure note just the same.
            tell = step == "capture" and exc.destination == "bugpilot"
            self._dead(
                job,
                exc.reason,
                str(exc),
                helpdesk=helpdesk if tell else None,
                exc=exc,
                step=step,
                started=started,
            )
            return
        self._reschedule(job, step, "retry", started, exc, helpdesk)

    def _reschedule(
        self,
        job: Job,
        step: str,
        outcome: str,
        started: float,
        exc: DeliveryError | None,
        helpdesk: Helpdesk | None = None,
    ) -> None:
        delay = self.backoff.delay(job.attempts, exc.retry_after if exc else None)
        if step == "report":
            # Poll once more at the end of the report budget, not after it.
            delay = min(delay, max(self._report_time_left(job), 0.0))
        elif self.clock() + delay - job.created_at > self.max_job_age:
            self._dead(
                job,
                "retry_budget_exhausted",
                str(exc) if exc else "out of time",
                helpdesk=helpdesk if step == "capture" else None,
                exc=exc,
                step=step,
                started=started,
            )
            return
        values: dict[str, Any] = {}
        if step == "capture":
            values["capture_started_at"] = None
        self._update(
            job,
            next_attempt_at=self.clock() + delay,
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
        self._update(
            job,
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
        exc: DeliveryError | None = None,
        step: str = "capture",
        started: float | None = None,
        look_first: bool = False,
    ) -> None:
        """End the job; tell the agent on the ticket why, where that is possible."""
        started = time.perf_counter() if started is None else started
        values: dict[str, Any] = {"dead_reason": reason, "last_error": detail[:500]}
        if reason != "capture_in_doubt":
            values["capture_started_at"] = None
        if job.user_id is not None:
            values["user_id"] = job.user_id
        if helpdesk is not None and job.state == "pending":
            # The verdict goes to the store before the note: a holder that dies
            # in between leaves a pending job with noted_at set, and the next
            # holder finishes it (``_finish_failure``) without a second note.
            self._update(job, noted_at=self.clock(), **values)
            self._failure_note(job, helpdesk, reason, note, look_first=look_first)
            values["noted_at"] = None
        self._update(
            job,
            state="dead",
            release=True,
            attempt=_attempt(step, "dead", started, exc, detail=reason),
            **values,
        )
        metrics.JOB_ATTEMPTS.labels("dead").observe(job.attempts)
        self._log_step(job, step, "dead", started, reason=reason, state="dead")

    def _failure_note(
        self,
        job: Job,
        helpdesk: Helpdesk,
        reason: str,
        template: str | None,
        *,
        look_first: bool,
    ) -> None:
        if template is None:
            template = IN_DOUBT_NOTE if reason == "capture_in_doubt" else FAILURE_NOTE
        values = _values(job, job.user_id)
        values["error"] = reason.replace("_", " ")
        body = render(template, values)
        try:
            if self._write_note(
                job, helpdesk, _target(job), body, key=body, look_first=look_first
            ):
                metrics.NOTES.labels(job.provider, "failure_note").inc()
        except DeliveryError as exc:
            # The job's reason is recorded either way; the note is a courtesy.
            log.warning("failure note not written", job_id=job.id, reason=exc.reason)

    def _finish_failure(self, job: Job, helpdesk: Helpdesk) -> None:
        """End a job whose earlier holder died while writing its failure note."""
        row = self.store.get_job(job.id) or {}
        reason = row.get("dead_reason") or "internal_error"
        self._dead(
            job,
            reason,
            row.get("last_error") or reason,
            helpdesk=helpdesk,
            note=job.rule.offline_note if reason == "user_not_connected" else None,
            look_first=True,
        )

    # -- helpers ----------------------------------------------------------------

    def _update(self, job: Job, **values: Any) -> None:
        """Change the job in the store, or raise ``LeaseLost`` if it is not ours."""
        if not self.store.update(job.id, self.owner, **values):
            raise LeaseLost(job.id)

    def _prove_lease(self, job: Job, **values: Any) -> None:
        """Renew the lease right before a call that must not happen twice.

        Raises ``LeaseLost`` when this worker gave the job up, or another
        worker took it over while this one stalled.
        """
        with self._lock:
            if job.id in self._given_up:
                raise LeaseLost(job.id)
        self._update(job, lease_until=time.time() + self.lease, **values)

    def _log_step(
        self, job: Job, step: str, outcome: str, started: float, **fields: Any
    ) -> None:
        level = log.warning if outcome in ("dead", "retry") else log.info
        level(
            "job step",
            job_id=job.id,
            provider=job.provider,
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

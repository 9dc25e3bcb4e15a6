"""Events and jobs in SQLite or PostgreSQL: enqueue, claim, complete, replay.

The store is the only thing the web server and the workers share. Every write
happens in one short transaction. On SQLite each writing transaction starts with
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade; on
PostgreSQL claims lock rows with ``FOR UPDATE SKIP LOCKED`` so workers never wait
for each other. Everything above ``_begin`` and ``_lock_due`` is one code path.

A claimed job carries a lease (owner and expiry). Every later update of that job
names the owner and changes nothing once the lease has passed to someone else,
so a worker that stalled past its lease cannot overwrite the new holder's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from relay.model import TagEvent
from relay.rules import Rule
from relay.schema import cooldowns, events, job_attempts, jobs

ACTIVE_STATES = ("pending", "noting")
STATES = ("pending", "noting", "done", "dead")


@dataclass(frozen=True)
class IngestResult:
    """What storing one event did: job ids, or why nothing was stored."""

    jobs: tuple[tuple[int, Rule], ...] = ()
    ignored: str | None = None

    @property
    def job_ids(self) -> list[int]:
        return [job_id for job_id, _rule in self.jobs]


@dataclass(frozen=True)
class Job:
    """A job as claimed by a worker: everything needed to deliver it."""

    id: int
    provider: str
    target_kind: str
    target_id: str
    tag: str
    tag_id: str | None
    rule: Rule
    requester: dict[str, Any]
    subject: str
    state: str
    attempts: int
    created_at: float
    user_id: str | None
    capture_started_at: float | None
    session_info_url: str | None
    noted_at: float | None
    offline_since: float | None
    report_url: str | None
    in_doubt: bool = False
    """True when an earlier holder died after it may have asked Bugpilot."""

    @property
    def action(self) -> str:
        return self.rule.action


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with relay's connection settings for each dialect."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"isolation_level": None, "timeout": 30},
            pool_size=20,
            max_overflow=20,
        )
        sa_event.listen(engine, "connect", _sqlite_connect)
        sa_event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # The driver runs in autocommit mode; relay issues BEGIN itself so that
    # writers take the write lock at once instead of upgrading a read lock.
    if conn.get_execution_options().get("readonly"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class _WriteLock:
    """Serialises SQLite writers across threads and processes.

    SQLite allows one writer at a time; a writer that finds the database locked
    sleeps in its busy handler for up to tens of milliseconds a try. Queueing
    on an flock next to the database file instead wakes the next writer the
    moment the lock is free.
    """

    def __init__(self, path: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = path
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class Store:
    """Relay's persistent state; one instance per process, safe across threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if self.is_sqlite else postgresql.insert
        database = engine.url.database
        self._write_lock = (
            _WriteLock(f"{database}.lock")
            if self.is_sqlite and database and database != ":memory:"
            else None
        )
        self._ingests = _GroupCommitter("relay-ingest", self._ingest_batch)
        self._updates = _GroupCommitter("relay-updates", self._update_batch)
        # Built once: the ingest path runs these for every webhook.
        self._insert_events = events.insert().returning(
            events.c.id, sort_by_parameter_order=True
        )
        self._insert_jobs = jobs.insert().returning(
            jobs.c.id, sort_by_parameter_order=True
        )
        upsert = self._insert(cooldowns).values(
            provider=sa.bindparam("provider"),
            target_id=sa.bindparam("target_id"),
            rule=sa.bindparam("rule"),
            until=sa.bindparam("until"),
        )
        self._upsert_cooldown = upsert.on_conflict_do_update(
            index_elements=["provider", "target_id", "rule"],
            set_={"until": upsert.excluded.until},
            where=cooldowns.c.until <= sa.bindparam("now"),
        ).returning(cooldowns.c.rule)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(create_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _begin(self, *, readonly: bool = False) -> Iterator[Connection]:
        lock = (
            self._write_lock.held()
            if self._write_lock is not None and not readonly
            else contextlib.nullcontext()
        )
        with lock, self.engine.connect() as conn:
            if readonly:
                conn = conn.execution_options(readonly=True)
            with conn.begin():
                yield conn

    # -- web side -------------------------------------------------------------

    def ingest(
        self,
        event: TagEvent,
        matches: Sequence[tuple[str, Rule]],
        *,
        cooldown: float,
        now: float | None = None,
    ) -> IngestResult:
        """Store the event and one job per matched rule, committed on return.

        Concurrent calls share one transaction and one commit (group commit):
        the answer comes back only after the commit that holds this event. A
        delivery id seen before gives ``ignored="duplicate"``; when every
        matched rule is cooling down for this ticket nothing is stored and the
        result is ``ignored="cooldown"``.
        """
        result: IngestResult = self._ingests.submit(
            (event, matches, cooldown, time.time() if now is None else now)
        )
        return result

    def _ingest_batch(self, batch: Sequence[_Pending]) -> None:
        """Store a batch of events in one transaction, with few statements.

        Duplicates are found with one query for the whole batch; events and
        jobs are inserted with one statement each. Should another replica
        store one of the same deliveries meanwhile, the insert fails and the
        batch is stored again one event at a time.
        """
        try:
            with self._begin() as conn:
                self._store_batch(conn, batch)
        except IntegrityError:
            if len(batch) == 1:
                batch[0].result = IngestResult(ignored="duplicate")
                return
            for item in batch:
                self._ingest_batch([item])

    def _store_batch(self, conn: Connection, batch: Sequence[_Pending]) -> None:
        keys = {
            (item.payload[0].provider, item.payload[0].delivery_id) for item in batch
        }
        seen = {
            (provider, delivery_id)
            for provider, delivery_id in conn.execute(
                sa.select(events.c.provider, events.c.delivery_id).where(
                    events.c.delivery_id.in_([key[1] for key in keys])
                )
            )
        }

        accepted: list[tuple[_Pending, list[tuple[str, Rule]]]] = []
        for item in batch:
            event, matches, cooldown, now = item.payload
            key = (event.provider, event.delivery_id)
            if key in seen:
                item.result = IngestResult(ignored="duplicate")
                continue
            seen.add(key)
            allowed = [
                (tag, rule)
                for tag, rule in matches
                if cooldown <= 0
                or self._start_cooldown(conn, event, rule.name, now, cooldown)
            ]
            if not allowed:
                item.result = IngestResult(ignored="cooldown")
                continue
            accepted.append((item, allowed))
        if not accepted:
            return

        event_rows = [
            {
                "provider": item.payload[0].provider,
                "delivery_id": item.payload[0].delivery_id,
                "target_kind": item.payload[0].target_kind,
                "target_id": item.payload[0].target_id,
                "received_at": item.payload[3],
            }
            for item, _allowed in accepted
        ]
        event_ids = conn.execute(self._insert_events, event_rows).scalars().all()

        job_rows = []
        for event_id, (item, allowed) in zip(event_ids, accepted, strict=True):
            event, now = item.payload[0], item.payload[3]
            requester = asdict(event.requester)
            for tag, rule in allowed:
                job_rows.append(
                    {
                        "event_id": event_id,
                        "provider": event.provider,
                        "target_kind": event.target_kind,
                        "target_id": event.target_id,
                        "tag": tag,
                        "tag_id": event.tag_id(tag),
                        "rule": rule.name,
                        "action": rule.action,
                        "rule_snapshot": rule.to_dict(),
                        "requester": requester,
                        "subject": event.subject[:2000],
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
        job_ids = iter(conn.execute(self._insert_jobs, job_rows).scalars().all())
        for item, allowed in accepted:
            item.result = IngestResult(
                jobs=tuple((next(job_ids), rule) for _tag, rule in allowed)
            )

    def _start_cooldown(
        self, conn: Connection, event: TagEvent, rule: str, now: float, cooldown: float
    ) -> bool:
        """Start the cooldown of (provider, target, rule) unless one is running."""
        row = conn.execute(
            self._upsert_cooldown,
            {
                "provider": event.provider,
                "target_id": f"{event.target_kind}:{event.target_id}",
                "rule": rule,
                "until": now + cooldown,
                "now": now,
            },
        ).first()
        # RETURNING yields a row only when the cooldown was started or renewed.
        return row is not None

    # -- worker side ----------------------------------------------------------

    def claim(self, owner: str, *, limit: int = 1, lease: float = 60.0) -> list[Job]:
        """Lease up to ``limit`` due jobs to ``owner`` and return them."""
        now = time.time()
        with self._begin() as conn:
            query = (
                sa.select(jobs.c.id)
                .where(
                    jobs.c.state.in_(ACTIVE_STATES),
                    jobs.c.next_attempt_at <= now,
                    sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now),
                )
                .order_by(jobs.c.next_attempt_at)
                .limit(limit)
            )
            ids = conn.execute(self._lock_due(query)).scalars().all()
            if not ids:
                return []
            conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids))
                .values(
                    lease_owner=owner,
                    lease_until=now + lease,
                    attempts=jobs.c.attempts + 1,
                    updated_at=now,
                )
            )
            rows = conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids))).all()
        return [_job(row._mapping) for row in rows]

    def _lock_due(self, query: sa.Select[Any]) -> sa.Select[Any]:
        # SQLite holds the database write lock from BEGIN IMMEDIATE already.
        if self.is_sqlite:
            return query
        return query.with_for_update(skip_locked=True)

    def update(
        self,
        job_id: int,
        owner: str,
        *,
        attempt: Mapping[str, Any] | None = None,
        release: bool = False,
        **values: Any,
    ) -> bool:
        """Change a leased job; False (and no change) when the lease is lost.

        ``attempt`` adds a row to the job's history in the same transaction;
        ``release`` gives the lease up. Updates from all threads of a process
        are committed together (see ``_GroupCommitter``).
        """
        now = time.time()
        values["updated_at"] = now
        if release:
            values["lease_owner"] = None
            values["lease_until"] = None
        if values.get("state") in ("done", "dead"):
            values["finished_at"] = now

        def work(conn: Connection) -> bool:
            changed = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                .values(**values)
            ).rowcount
            if changed and attempt is not None:
                conn.execute(
                    job_attempts.insert().values(job_id=job_id, at=now, **attempt)
                )
            return bool(changed)

        return bool(_with_reconnect(lambda: self._updates.submit(work)))

    def _update_batch(self, batch: list[_Pending]) -> None:
        try:
            with self._begin() as conn:
                for item in batch:
                    item.result = item.payload(conn)
        except Exception:
            if len(batch) == 1:
                raise
            # Keep one bad update from failing the others: run each alone.
            for item in batch:
                try:
                    self._update_batch([item])
                except Exception as single:
                    item.result, item.error = None, single

    def extend_lease(self, job_ids: Iterable[int], owner: str, lease: float) -> int:
        """Push the lease of jobs still held by ``owner``; returns how many."""
        ids = list(job_ids)
        if not ids:
            return 0
        with self._begin() as conn:
            return conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids), jobs.c.lease_owner == owner)
                .values(lease_until=time.time() + lease)
            ).rowcount

    # -- reading and operating ------------------------------------------------

    def ping(self) -> None:
        """Raise when the store cannot be reached."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def job_counts(self) -> tuple[dict[str, int], float | None]:
        """Jobs per state and the creation time of the oldest unfinished job."""
        with self._begin(readonly=True) as conn:
            counts = {
                state: count
                for state, count in conn.execute(
                    sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
                )
            }
            oldest = conn.execute(
                sa.select(sa.func.min(jobs.c.created_at)).where(
                    jobs.c.state.in_(ACTIVE_STATES)
                )
            ).scalar()
        return counts, oldest

    def list_jobs(
        self, *, state: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Jobs newest first, optionally of one state; page with ``before``."""
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if state:
            query = query.where(jobs.c.state == state)
        if before is not None:
            query = query.where(jobs.c.id < before)
        with self._begin(readonly=True) as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        """One job with its attempt history, or None."""
        with self._begin(readonly=True) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            history = conn.execute(
                sa.select(job_attempts)
                .where(job_attempts.c.job_id == job_id)
                .order_by(job_attempts.c.id)
            ).all()
        job = dict(row._mapping)
        job["history"] = [dict(item._mapping) for item in history]
        return job

    def retry(self, job_ids: Sequence[int]) -> dict[int, str]:
        """Send dead jobs back to work; the answer says, per id, what happened."""
        now = time.time()
        outcome: dict[int, str] = {}
        with self._begin() as conn:
            found = dict(
                conn.execute(
                    sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(job_ids))
                ).all()
            )
            for job_id in job_ids:
                state = found.get(job_id)
                if state is None:
                    outcome[job_id] = "not_found"
                elif state != "dead":
                    outcome[job_id] = "not_dead"
                else:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == job_id)
                        .values(
                            state="noting" if _captured(conn, job_id) else "pending",
                            next_attempt_at=now,
                            lease_owner=None,
                            lease_until=None,
                            attempts=0,
                            offline_since=None,
                            capture_started_at=None,
                            dead_reason=None,
                            finished_at=None,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    conn.execute(
                        job_attempts.insert().values(
                            job_id=job_id, at=now, step="replay", outcome="requeued"
                        )
                    )
                    outcome[job_id] = "retried"
        return outcome

    def dead_job_ids(self) -> list[int]:
        with self._begin(readonly=True) as conn:
            return list(
                conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.state == "dead")
                    .order_by(jobs.c.id)
                ).scalars()
            )

    def purge(self, *, older_than: float, now: float | None = None) -> int:
        """Delete finished jobs, and events left without jobs, older than that."""
        cutoff = (time.time() if now is None else now) - older_than
        with self._begin() as conn:
            finished = sa.select(jobs.c.id).where(
                jobs.c.state.in_(("done", "dead")), jobs.c.finished_at < cutoff
            )
            conn.execute(
                job_attempts.delete().where(job_attempts.c.job_id.in_(finished))
            )
            purged = conn.execute(
                jobs.delete().where(
                    jobs.c.state.in_(("done", "dead")), jobs.c.finished_at < cutoff
                )
            ).rowcount
            orphan = ~sa.exists().where(jobs.c.event_id == events.c.id)
            conn.execute(events.delete().where(events.c.received_at < cutoff, orphan))
            conn.execute(cooldowns.delete().where(cooldowns.c.until < cutoff))
        return purged


def _captured(conn: Connection, job_id: int) -> bool:
    url = conn.execute(
        sa.select(jobs.c.session_info_url).where(jobs.c.id == job_id)
    ).scalar()
    return url is not None


def _job(row: Any) -> Job:
    # The worker marks capture_started_at just before it asks Bugpilot and clears
    # it once the answer is recorded; still set at a new claim, the earlier
    # holder died in between.
    return Job(
        in_doubt=row["capture_started_at"] is not None and row["state"] == "pending",
        id=row["id"],
        provider=row["provider"],
        target_kind=row["target_kind"],
        target_id=row["target_id"],
        tag=row["tag"],
        tag_id=row["tag_id"],
        rule=Rule.from_dict(row["rule_snapshot"]),
        requester=dict(row["requester"] or {}),
        subject=row["subject"] or "",
        state=row["state"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        user_id=row["user_id"],
        capture_started_at=row["capture_started_at"],
        session_info_url=row["session_info_url"],
        noted_at=row["noted_at"],
        offline_since=row["offline_since"],
        report_url=row["report_url"],
    )


def _with_reconnect(write: Any, *, tries: int = 8, first_wait: float = 0.25) -> Any:
    """Run a write, retrying while the database connection is broken.

    Job updates are idempotent (the same values, guarded by the lease owner), so
    repeating one after a lost connection is safe; giving up would instead
    leave a finished step unrecorded.
    """
    wait = first_wait
    for attempt in range(tries):
        try:
            return write()
        except OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 5.0)
    return None


def new_owner() -> str:
    """A lease owner id unique to this process and thread pool."""
    return f"{uuid.uuid4().hex[:12]}"


@dataclass
class _Pending:
    """One unit of work waiting for a group commit, and what became of it."""

    payload: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class _GroupCommitter:
    """One writer thread per process that commits waiting work together.

    A caller hands its work over and waits; the writer takes everything
    waiting at that moment, runs it in one transaction and wakes each caller
    after the commit. Under load many fsyncs become one; alone, a call pays
    only a thread hand-off. ``run_batch`` sets each item's result or error.
    """

    MAX_BATCH = 128

    def __init__(self, name: str, run_batch: Callable[[list[_Pending]], None]) -> None:
        self.name = name
        self.run_batch = run_batch
        self.queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._owner_pid: int | None = None

    def submit(self, payload: Any) -> Any:
        """Run ``payload`` in the next group commit; its result once committed."""
        self._ensure_writer()
        item = _Pending(payload)
        self.queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def _ensure_writer(self) -> None:
        # A forked child (a gunicorn worker) needs a writer thread of its own.
        pid = os.getpid()
        if self._owner_pid == pid:
            return
        with self._lock:
            if self._owner_pid != pid:
                self.queue = queue.SimpleQueue()
                threading.Thread(
                    target=self._write, name=self.name, daemon=True
                ).start()
                self._owner_pid = pid

    def _write(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.run_batch(batch)
            except BaseException as exc:  # every caller must hear of it
                for item in batch:
                    item.result, item.error = None, exc
            finally:
                for item in batch:
                    item.done.set()


STORE_ERRORS = (OperationalError, SQLAlchemyError)

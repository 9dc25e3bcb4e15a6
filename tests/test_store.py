"""The store on SQLite and on PostgreSQL: one code path, the same answers."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from relay import migrate
from relay.model import Requester, TagEvent
from relay.rules import Rule
from relay.schema import events, metadata
from relay.store import Store

SCREENSHOT = Rule(name="shot", tag="bugpilot_screenshot", action="upload-screenshot")
SESSION = Rule(name="session", tag="bugpilot_screenshot", action="upload-session")


def event(delivery: str = "d-1", ticket: str = "35436") -> TagEvent:
    return TagEvent(
        provider="zendesk",
        delivery_id=delivery,
        target_kind="ticket",
        target_id=ticket,
        tags_added=("bugpilot_screenshot",),
        requester=Requester(email="jane@example.com", remote_id="7"),
        subject="Cannot log in",
    )


def matches(*rules: Rule) -> list[tuple[str, Rule]]:
    return [("bugpilot_screenshot", rule) for rule in rules]


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("events", "jobs", "job_attempts")
        }


def test_an_event_and_its_jobs_are_stored_together(store: Store) -> None:
    result = store.ingest(event(), matches(SCREENSHOT, SESSION), cooldown=600)
    assert result.ignored is None
    assert len(result.job_ids) == 2
    assert counts(store) == {"events": 1, "jobs": 2, "job_attempts": 0}


def test_a_delivery_seen_before_is_a_duplicate(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    again = store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    assert again.ignored == "duplicate"
    assert counts(store)["jobs"] == 1


def test_the_cooldown_is_per_ticket_and_rule(store: Store) -> None:
    now = time.time()
    assert store.ingest(event("a"), matches(SCREENSHOT), cooldown=600, now=now).jobs
    cooled = store.ingest(event("b"), matches(SCREENSHOT), cooldown=600, now=now + 1)
    assert cooled.ignored == "cooldown"
    other_ticket = store.ingest(
        event("c", ticket="9"), matches(SCREENSHOT), cooldown=600, now=now + 1
    )
    assert other_ticket.jobs
    other_rule = store.ingest(event("d"), matches(SESSION), cooldown=600, now=now + 1)
    assert other_rule.jobs
    later = store.ingest(event("e"), matches(SCREENSHOT), cooldown=600, now=now + 601)
    assert later.jobs
    # Nothing of the cooled-down delivery was kept, so it is not a duplicate later.
    assert store.ingest(event("b"), matches(SCREENSHOT), cooldown=0, now=now + 700).jobs


def test_a_claimed_job_is_leased_to_one_owner(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    [job] = store.claim("one", limit=5, lease=60)
    assert job.state == "pending"
    assert job.attempts == 1
    assert job.rule == SCREENSHOT
    assert job.requester["email"] == "jane@example.com"
    assert store.claim("two", limit=5, lease=60) == []
    assert not store.update(job.id, "two", state="done")
    assert store.update(job.id, "one", state="done", release=True)
    assert store.get_job(job.id)["state"] == "done"


def test_an_expired_lease_lets_another_worker_take_the_job(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    [first] = store.claim("crashed", lease=0.05)
    assert not first.in_doubt
    assert store.update(first.id, "crashed", capture_started_at=time.time())
    time.sleep(0.1)
    [second] = store.claim("survivor", lease=60)
    assert second.id == first.id
    assert second.attempts == 2
    # The first holder died after starting its capture attempt.
    assert second.in_doubt
    assert not store.update(first.id, "crashed", state="done")


def test_a_lost_claim_is_not_in_doubt(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    store.claim("w", lease=0.05)  # the claimer never started the capture
    time.sleep(0.1)
    [again] = store.claim("w", lease=60)
    assert not again.in_doubt


def test_jobs_not_yet_due_are_not_claimed(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    [job] = store.claim("w")
    store.update(job.id, "w", next_attempt_at=time.time() + 60, release=True)
    assert store.claim("w") == []


def test_concurrent_claims_hand_out_each_job_once(store: Store) -> None:
    for number in range(60):
        store.ingest(
            event(f"d{number}", ticket=str(number)), matches(SCREENSHOT), cooldown=0
        )
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(owner: str) -> None:
        while True:
            jobs = store.claim(owner, limit=3, lease=60)
            if not jobs:
                return
            with lock:
                taken.extend(job.id for job in jobs)

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(set(taken))
    assert len(taken) == 60


def test_history_retry_and_purge(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    [job] = store.claim("w")
    store.update(
        job.id,
        "w",
        state="dead",
        dead_reason="no_access",
        release=True,
        attempt={
            "step": "capture",
            "outcome": "dead",
            "http_status": 403,
            "error_code": "NO_ACCESS",
            "duration_ms": 12,
        },
    )
    shown = store.get_job(job.id)
    assert shown["dead_reason"] == "no_access"
    assert shown["history"][0]["error_code"] == "NO_ACCESS"
    assert store.list_jobs(state="dead")[0]["id"] == job.id
    assert store.dead_job_ids() == [job.id]

    assert store.retry([job.id, 999]) == {job.id: "retried", 999: "not_found"}
    assert store.retry([job.id]) == {job.id: "not_dead"}
    [again] = store.claim("w")
    assert again.id == job.id and again.state == "pending" and again.attempts == 1

    store.update(job.id, "w", state="done", release=True)
    assert store.purge(older_than=3600) == 0
    assert store.purge(older_than=0, now=time.time() + 1) == 1
    assert counts(store) == {"events": 0, "jobs": 0, "job_attempts": 0}


def test_a_captured_dead_job_is_retried_from_the_note_step(store: Store) -> None:
    store.ingest(event(), matches(SCREENSHOT), cooldown=0)
    [job] = store.claim("w")
    store.update(
        job.id, "w", state="dead", session_info_url="https://x/1", release=True
    )
    store.retry([job.id])
    [again] = store.claim("w")
    assert again.state == "noting"


def test_job_counts_and_oldest(store: Store) -> None:
    assert store.job_counts() == ({}, None)
    store.ingest(event("a"), matches(SCREENSHOT), cooldown=0, now=1000.0)
    store.ingest(event("b", ticket="2"), matches(SCREENSHOT), cooldown=0, now=2000.0)
    by_state, oldest = store.job_counts()
    assert by_state == {"pending": 2}
    assert oldest == 1000.0


def test_paging_walks_every_job_once(store: Store) -> None:
    for number in range(7):
        store.ingest(
            event(f"p{number}", ticket=str(number)), matches(SCREENSHOT), cooldown=0
        )
    seen, before = [], None
    while True:
        page = store.list_jobs(limit=3, before=before)
        if not page:
            break
        seen += [row["id"] for row in page]
        before = page[-1]["id"]
    assert len(seen) == 7 == len(set(seen))


def test_migrations_create_the_schema_the_code_uses(store: Store) -> None:
    inspector = sa.inspect(store.engine)
    for table in metadata.sorted_tables:
        migrated = {column["name"] for column in inspector.get_columns(table.name)}
        assert migrated == set(table.columns.keys()), table.name
    assert migrate.current(store.engine) == migrate.head()


def test_an_unmigrated_database_is_refused_with_the_command_to_run(tmp_path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(migrate.SchemaMismatch, match="relay db upgrade"):
        migrate.check(store.engine, auto_upgrade=False)
    migrate.check(store.engine, auto_upgrade=True)
    assert migrate.current(store.engine) == migrate.head()


def test_a_newer_schema_is_refused(tmp_path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'new.db'}")
    migrate.upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(migrate.SchemaMismatch, match="newer"):
        migrate.check(store.engine, auto_upgrade=True)


def test_concurrent_ingests_share_commits_and_dedupe_within_a_batch(
    store: Store,
) -> None:
    results = []
    lock = threading.Lock()

    def send(number: int) -> None:
        # Every delivery is sent three times at once; each must be stored once.
        result = store.ingest(
            event(f"same-{number % 20}", ticket=str(number % 20)),
            matches(SCREENSHOT),
            cooldown=0,
        )
        with lock:
            results.append(result)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [r for r in results if r.jobs]
    assert len(accepted) == 20
    assert sorted(r.ignored for r in results if not r.jobs) == ["duplicate"] * 40
    assert len({job_id for r in accepted for job_id in r.job_ids}) == 20
    assert counts(store) == {"events": 20, "jobs": 20, "job_attempts": 0}


def test_a_delivery_another_replica_stored_meanwhile_is_a_duplicate(
    store: Store, monkeypatch
) -> None:
    store.ingest(event("raced"), matches(SCREENSHOT), cooldown=0)
    original_select = sa.select

    def blind_to_events(*columns, **kwargs):
        # The duplicate check finds nothing, as if another replica committed
        # the delivery between that check and the insert.
        query = original_select(*columns, **kwargs)
        if any(getattr(column, "table", None) is events for column in columns):
            return query.where(sa.false())
        return query

    monkeypatch.setattr("relay.store.sa.select", blind_to_events)
    result = store.ingest(event("raced"), matches(SCREENSHOT), cooldown=0)
    assert result.ignored == "duplicate"
    assert counts(store)["jobs"] == 1

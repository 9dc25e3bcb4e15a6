"""The tables relay keeps, as SQLAlchemy Core metadata.

Times are seconds since the epoch (double precision) on both engines, so claims
and backoff compare plain numbers. Alembic migrations in ``relay/migrations``
create and change these tables; a test checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only autoincrements INTEGER PRIMARY KEY columns.
Id = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("provider", String(16), nullable=False),
    Column("delivery_id", String(200), nullable=False),
    Column("target_kind", String(16), nullable=False),
    Column("target_id", String(100), nullable=False),
    Column("received_at", Double, nullable=False),
    UniqueConstraint("provider", "delivery_id", name="uq_events_delivery"),
)
Index("ix_events_received_at", events.c.received_at)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "event_id",
        Id,
        ForeignKey("events.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("provider", String(16), nullable=False),
    Column("target_kind", String(16), nullable=False),
    Column("target_id", String(100), nullable=False),
    Column("tag", String(200), nullable=False),
    Column("tag_id", String(100)),
    Column("rule", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("rule_snapshot", JSON, nullable=False),
    Column("requester", JSON, nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False),
    Column("lease_owner", String(100)),
    Column("lease_until", Double),
    Column("user_id", String(320)),
    Column("capture_started_at", Double),
    Column("session_info_url", Text),
    Column("noted_at", Double),
    Column("offline_since", Double),
    Column("report_url", Text),
    Column("last_error", Text),
    Column("dead_reason", String(100)),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double),
)
Index("ix_jobs_due", jobs.c.state, jobs.c.next_attempt_at)
Index("ix_jobs_event", jobs.c.event_id)
Index("ix_jobs_finished_at", jobs.c.finished_at)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "job_id",
        Id,
        ForeignKey("jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", Double, nullable=False),
    Column("step", String(16), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("http_status", Integer),
    Column("error_code", String(64)),
    Column("detail", Text),
    Column("duration_ms", Integer),
)
Index("ix_job_attempts_job", job_attempts.c.job_id)

cooldowns = Table(
    "cooldowns",
    metadata,
    Column("provider", String(16), primary_key=True),
    Column("target_id", String(100), primary_key=True),
    Column("rule", String(200), primary_key=True),
    Column("until", Double, nullable=False),
)

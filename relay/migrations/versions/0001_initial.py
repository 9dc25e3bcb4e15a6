"""Events, jobs, their attempt history and cooldowns.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("delivery_id", sa.String(200), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(100), nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.UniqueConstraint("provider", "delivery_id", name="uq_events_delivery"),
    )
    op.create_index("ix_events_received_at", "events", ["received_at"])
    op.create_table(
        "jobs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            Id,
            sa.ForeignKey("events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(100), nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("tag_id", sa.String(100)),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("rule_snapshot", sa.JSON, nullable=False),
        sa.Column("requester", sa.JSON, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Double, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until", sa.Double),
        sa.Column("user_id", sa.String(320)),
        sa.Column("capture_started_at", sa.Double),
        sa.Column("session_info_url", sa.Text),
        sa.Column("noted_at", sa.Double),
        sa.Column("offline_since", sa.Double),
        sa.Column("report_url", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("dead_reason", sa.String(100)),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
    )
    op.create_index("ix_jobs_due", "jobs", ["state", "next_attempt_at"])
    op.create_index("ix_jobs_event", "jobs", ["event_id"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_table(
        "job_attempts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            Id,
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error_code", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("duration_ms", sa.Integer),
    )
    op.create_index("ix_job_attempts_job", "job_attempts", ["job_id"])
    op.create_table(
        "cooldowns",
        sa.Column("provider", sa.String(16), primary_key=True),
        sa.Column("target_id", sa.String(100), primary_key=True),
        sa.Column("rule", sa.String(200), primary_key=True),
        sa.Column("until", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cooldowns")
    op.drop_table("job_attempts")
    op.drop_table("jobs")
    op.drop_table("events")

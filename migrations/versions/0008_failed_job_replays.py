"""failed jobs replayed and poison jobs quarantined; a job's trace context kept

- `jobs.lost_runs`: runs of the job its worker process died under (SIGKILL,
  the OOM killer, a segfault); at POISON_MAX_LOST_RUNS the job fails with
  code `worker_lost` instead of being delivered again.
- `jobs.replays`: times an admin replayed the failed job (same task id, a new
  attempt); webhook deliveries are unique per (endpoint, task, event, replay),
  so each replay's outcome is delivered again.
- `jobs.trace_parent`: the W3C traceparent of the submit, when tracing sampled
  it, so a re-published message continues the job's trace.
- `failed_job_replays` and `failed_job_replay_items`: who replayed which
  failed jobs, when, and what each had failed with.
- `ix_jobs_failed`: failed jobs by finish time, for the admin listing.

Revision ID: 0008_failed_job_replays
Revises: 0006_ledger_posting_function
Create Date: 2026-12-07 01:50:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_failed_job_replays"
# 0007_fair_share is being written beside this one; the lead re-chains on merge.
down_revision = "0006_ledger_posting_function"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("lost_runs", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("replays", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("trace_parent", sa.String(55), nullable=True))
    op.create_index(
        "ix_jobs_failed",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("state = 'FAILURE'"),
        sqlite_where=sa.text("state = 'FAILURE'"),
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("replay", sa.SmallInteger(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_webhook_deliveries_event", type_="unique")
        batch.create_unique_constraint(
            "uq_webhook_deliveries_event", ["endpoint_id", "task_id", "event", "replay"]
        )
    op.create_table(
        "failed_job_replays",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("admin_id", BigId, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("admin_username", sa.String(64), nullable=False),
        sa.Column("selection", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        sa.Column("replayed", sa.Integer(), nullable=False),
    )
    op.create_index("ix_failed_job_replays_at", "failed_job_replays", ["replayed_at"])
    op.create_table(
        "failed_job_replay_items",
        sa.Column(
            "replay_id",
            BigId,
            sa.ForeignKey("failed_job_replays.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        # No foreign key: the record outlives the job row's retention.
        sa.Column("job_id", sa.Uuid(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.String(500)),
        sa.Column("failed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_failed_job_replay_items_job", "failed_job_replay_items", ["job_id"])


def downgrade() -> None:
    op.drop_table("failed_job_replay_items")
    op.drop_table("failed_job_replays")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint("uq_webhook_deliveries_event", type_="unique")
        batch.create_unique_constraint(
            "uq_webhook_deliveries_event", ["endpoint_id", "task_id", "event"]
        )
        batch.drop_column("replay")
    op.drop_index("ix_jobs_failed", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trace_parent")
        batch.drop_column("replays")
        batch.drop_column("lost_runs")

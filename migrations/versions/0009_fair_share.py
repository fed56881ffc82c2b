"""fair share: per-user weights and running caps of the fair queues

- `fair_shares`: one row per (user, queue) an admin gave a share other than
  the default: a weight (stride scheduling, >= 1) and a running cap (NULL:
  the queue's default, 0: none). The status Redis caches them
  (`fair:<queue>:policy`); the sweep re-syncs the cache from here.

Revision ID: 0009_fair_share
Revises: 0008_failed_job_replays
Create Date: 2026-12-07 06:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_fair_share"
down_revision = "0008_failed_job_replays"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fair_shares",
        sa.Column(
            "user_id",
            BigId,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("queue", sa.String(32), primary_key=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("weight >= 1", name="ck_fair_shares_weight"),
        sa.CheckConstraint("max_running IS NULL OR max_running >= 0", name="ck_fair_shares_cap"),
    )


def downgrade() -> None:
    op.drop_table("fair_shares")

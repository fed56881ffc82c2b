"""count how often the lost-message sweep re-published a job

Revision ID: 0004_jobs_redispatches
Revises: 0003_jobs_expires_at
Create Date: 2026-12-01 15:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_jobs_redispatches"
down_revision = "0003_jobs_expires_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("redispatches", sa.SmallInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("redispatches")

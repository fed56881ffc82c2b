"""partial index for counting a user's unfinished jobs (admission control)

Revision ID: 0002_jobs_owner_unfinished
Revises: 0001
Create Date: 2026-11-24 05:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_jobs_owner_unfinished"
down_revision = "0001"
branch_labels = None
depends_on = None

# Most rows are finished; indexing only the unfinished ones keeps the index
# small and makes the per-submission count an index-only scan of a few rows.
UNFINISHED = sa.text("state IN ('PENDING', 'STARTED', 'PROGRESS', 'RETRY')")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_owner_unfinished",
        "jobs",
        ["owner_id"],
        unique=False,
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_unfinished", table_name="jobs")

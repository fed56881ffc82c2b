"""index jobs.expires_at for the expiry sweep

Revision ID: 0003_jobs_expires_at
Revises: 0002_jobs_owner_unfinished
Create Date: 2026-11-24 06:00:00
"""

from alembic import op

revision = "0003_jobs_expires_at"
down_revision = "0002_jobs_owner_unfinished"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_expires_at", "jobs", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_expires_at", table_name="jobs")

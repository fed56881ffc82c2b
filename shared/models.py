"""Typed ORM models: users, wallets, ledger entries, job records, webhooks and replays."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL (indexable, compact), plain JSON on SQLite for development.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGSERIAL on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# The unfinished states (shared.jobs.UNFINISHED), as SQL for a partial index.
_UNFINISHED_SQL = "state IN ('PENDING', 'STARTED', 'PROGRESS', 'RETRY')"


class Base(DeclarativeBase):
    """Declarative base for every Conveyor table."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (CheckConstraint("balance >= 0", name="ck_wallets_balance_nonnegative"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)  # minor units
    currency: Mapped[str] = mapped_column(String(3))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        # A job posts entry `seq` at most once, however often Celery delivers it.
        UniqueConstraint("job_id", "seq", name="uq_ledger_entries_job_seq"),
        CheckConstraint("amount > 0", name="ck_ledger_entries_amount_positive"),
        CheckConstraint("type IN ('credit', 'debit')", name="ck_ledger_entries_type"),
        Index("ix_ledger_entries_wallet_created", "wallet_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id", ondelete="CASCADE"))
    # No foreign key: the ledger keeps naming its job after the job record expires.
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    seq: Mapped[int] = mapped_column(SmallInteger, default=0)
    type: Mapped[str] = mapped_column(String(6))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The idempotency guarantee is this constraint, not a check-then-insert.
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_state_updated", "state", "updated_at"),
        # The hourly expiry sweep deletes by expires_at; without this it scans.
        Index("ix_jobs_expires_at", "expires_at"),
        # Admission control counts a user's unfinished jobs on every submission.
        Index(
            "ix_jobs_owner_unfinished",
            "owner_id",
            postgresql_where=text(_UNFINISHED_SQL),
            sqlite_where=text(_UNFINISHED_SQL),
        ),
        # The admin's failed-jobs listing, newest failure first.
        Index(
            "ix_jobs_failed",
            "finished_at",
            postgresql_where=text("state = 'FAILURE'"),
            sqlite_where=text("state = 'FAILURE'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(SmallInteger, default=0)
    message: Mapped[str] = mapped_column(String(255), default="")
    params: Mapped[dict] = mapped_column(JSONType)
    result: Mapped[dict | None] = mapped_column(JSONType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    # Times the lost-message sweep published the job again (bounded; see maintenance).
    redispatches: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # Runs its worker process died under; at POISON_MAX_LOST_RUNS it fails `worker_lost`.
    lost_runs: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # Times an admin replayed it after a failure (same id, a new attempt).
    replays: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # The submit's W3C traceparent when it was traced, so a re-publish continues the trace.
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """A user's completion webhook: where to POST, for which events, signed with what."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_created", "owner_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list] = mapped_column(JSONType)
    # The signing key itself (whsec_<base64>): deliveries need it to sign, so
    # it cannot be stored as a one-way hash the way a password is.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event for one endpoint; its id is the `webhook-id` every attempt carries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # A job's outcome is delivered to an endpoint once, however often it is announced.
        # A replayed job's new outcome is delivered again: one delivery per replay.
        UniqueConstraint(
            "endpoint_id", "task_id", "event", "replay", name="uq_webhook_deliveries_event"
        ),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed')", name="ck_webhook_deliveries_state"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event: Mapped[str] = mapped_column(String(32))
    # No foreign key: the delivery log outlives the job record's expiry.
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    # The exact body every attempt sends (and signs), byte for byte.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    # The job's replay (jobs.replays) whose outcome this delivers; 0 before any.
    replay: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An attempt in progress holds the delivery until then; a second copy of
    # the message (redelivery) finds it held and does nothing.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the delivery log."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(255))
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)


class FailedJobReplay(Base):
    """One admin's replay of failed jobs: who, when, what was asked and how many were queued."""

    __tablename__ = "failed_job_replays"
    __table_args__ = (Index("ix_failed_job_replays_at", "replayed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    replayed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    admin_username: Mapped[str] = mapped_column(String(64))
    # The request: {"task_ids": [...]} or {"filter": {...}}.
    selection: Mapped[dict | None] = mapped_column(JSONType)
    replayed: Mapped[int] = mapped_column(Integer)


class FailedJobReplayItem(Base):
    """One job of a replay, with the failure it was replayed from (the job's history)."""

    __tablename__ = "failed_job_replay_items"
    __table_args__ = (Index("ix_failed_job_replay_items_job", "job_id"),)

    replay_id: Mapped[int] = mapped_column(
        ForeignKey("failed_job_replays.id", ondelete="CASCADE"), primary_key=True
    )
    # No foreign key: the record outlives the job row's retention.
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[int] = mapped_column(BigInteger)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FairShare(Base):
    """One user's share of one fair queue: a weight and a running cap (shared/jobs/fair.py)."""

    __tablename__ = "fair_shares"
    __table_args__ = (
        CheckConstraint("weight >= 1", name="ck_fair_shares_weight"),
        CheckConstraint("max_running IS NULL OR max_running >= 0", name="ck_fair_shares_cap"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    # None: the queue's default (AI_USER_CONCURRENCY, ...); 0: no cap.
    max_running: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

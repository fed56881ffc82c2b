"""A ledger job's whole effect in one SQL statement: claim, post, and finish, or nothing.

The general path (workers/job_run.py) takes three transactions per job:
claim, then lock the job and wallet, post, and finish. For a one-entry
`ledger.transaction` on PostgreSQL, one statement of data-modifying CTEs does
the same work with one round trip and one commit:

- `job` locks the job row if it is still unfinished (a cancelled or finished
  job yields nothing, so nothing else happens: cancel before start, and a
  duplicate delivery, stay no-ops);
- `wallet` moves the balance only if it stays >= 0 (PostgreSQL re-checks the
  condition on the newest row version under concurrency, so the
  never-below-zero rule holds as it does with SELECT ... FOR UPDATE);
- `entry` appends the ledger entry, unique on (job, seq) as always;
- `done` marks the job SUCCESS with its result, in the same commit;
- and whether the owner has webhook endpoints comes back with it, so a job
  of a user without any costs no further query.

When the job is unfinished but the wallet would go below zero, nothing is
written and the caller fails the job with `insufficient_funds`, as before.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from shared.jobs import UNFINISHED, status_from_row

# The job's own params say what to post; the worker passes only the job id.
_POST_AND_FINISH = text(
    """
WITH job AS (
    SELECT id, owner_id,
        params ->> 'type' AS type,
        (params ->> 'amount')::bigint AS amount,
        coalesce(params ->> 'description', '') AS description,
        CASE WHEN params ->> 'type' = 'credit' THEN 1 ELSE -1 END
            * (params ->> 'amount')::bigint AS delta
    FROM jobs
    WHERE id = :job_id AND kind = 'ledger.transaction' AND state = ANY(:unfinished)
    FOR UPDATE
), wallet AS (
    UPDATE wallets SET balance = wallets.balance + job.delta, updated_at = :now
    FROM job
    WHERE wallets.user_id = job.owner_id AND wallets.balance + job.delta >= 0
    RETURNING wallets.id, wallets.balance
), entry AS (
    INSERT INTO ledger_entries
        (wallet_id, job_id, seq, type, amount, balance_after, description, created_at)
    SELECT wallet.id, job.id, 0, job.type, job.amount, wallet.balance, job.description, :now
    FROM wallet, job
    RETURNING id, balance_after
), done AS (
    UPDATE jobs SET
        state = 'SUCCESS',
        progress = 100,
        message = 'done',
        result = jsonb_build_object('transaction_id', entry.id, 'balance', entry.balance_after),
        attempts = jobs.attempts + 1,
        started_at = coalesce(jobs.started_at, :now),
        updated_at = :now,
        finished_at = :now
    FROM entry
    WHERE jobs.id = :job_id
    RETURNING jobs.id, jobs.owner_id, jobs.kind, jobs.state, jobs.progress, jobs.message,
        jobs.created_at, jobs.updated_at, jobs.expires_at, jobs.result,
        jobs.error_code, jobs.error_message
)
SELECT (SELECT owner_id FROM job) AS claimed_owner,
    (SELECT type FROM job) AS entry_type, (SELECT amount FROM job) AS amount,
    EXISTS (
        SELECT 1 FROM webhook_endpoints, job WHERE webhook_endpoints.owner_id = job.owner_id
    ) AS has_webhooks,
    done.*
FROM (SELECT 1) AS one LEFT JOIN done ON true
"""
)


@dataclass(frozen=True)
class PostOutcome:
    """What the one statement did: skipped (job not unfinished), refused, or posted."""

    owner_id: int | None
    status: dict[str, Any] | None
    summary: str = ""
    # Whether the owner has any webhook endpoint: only then is the outbox asked.
    has_webhooks: bool = False

    @property
    def skipped(self) -> bool:
        """The job was cancelled or already finished: nothing was written."""
        return self.owner_id is None

    @property
    def refused(self) -> bool:
        """The job is unfinished but the debit would overdraw: nothing was written."""
        return self.owner_id is not None and self.status is None


def post_and_finish(conn: Connection | Session, job_id: uuid.UUID, *, now: datetime) -> PostOutcome:
    """Apply a `ledger.transaction` job's entry and mark it SUCCESS.

    One statement is atomic on its own: on an autocommit connection it needs
    no BEGIN or COMMIT round trip; inside a caller's transaction it joins it.
    """
    row = conn.execute(
        _POST_AND_FINISH, {"job_id": job_id, "now": now, "unfinished": list(UNFINISHED)}
    ).one()
    status = status_from_row(row) if row.id is not None else None
    summary = ""
    if status is not None:
        summary = f"{row.entry_type} of {row.amount} posted; balance {status['result']['balance']}"
    return PostOutcome(row.claimed_owner, status, summary, bool(row.has_webhooks))

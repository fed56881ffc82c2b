"""Ledger jobs' whole effect in one round trip: claim, post and finish, or nothing.

The general path (workers/job_run.py) takes three transactions per job:
claim, then lock the job and wallet, post, and finish. For one-entry
`ledger.transaction` jobs on PostgreSQL, one call of the database function
`conveyor_post_ledger_jobs` (migrations/versions/0006_ledger_posting_function.py)
does the same for a whole list of jobs in one transaction, one round trip and
one commit, each job with its own outcome:

- a job that is no longer unfinished (cancelled before start, or finished by a
  duplicate delivery) is skipped: nothing is written for it;
- a debit that would take the wallet below zero is refused: nothing is written
  for it, and the caller fails the job with `insufficient_funds` through the
  general path, as before;
- any other job is posted: its wallet moves, its ledger entry (unique on
  (job, seq), as always) is appended and the job is marked SUCCESS with its
  result, all in the same commit as the rest of the list.

Postings to one wallet apply in the order given. Locks follow one global
order (every job row of the list by id, then wallets in owner order), so two
lists that share owners, or even a job (a message delivered twice), never
deadlock, nor does a list and a single job's transaction. A list is all-or-nothing
at the transaction level: if the call fails (the database is down, a timeout),
nothing of it was written and every job can be run again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from shared.jobs import UNFINISHED, status_from_row

_POST_JOBS = text(
    "SELECT * FROM conveyor_post_ledger_jobs("
    "CAST(:job_ids AS uuid[]), :now, CAST(:unfinished AS text[]))"
)
# The status columns of a finished job, as the function returns them (r_<name>).
_STATUS_COLUMNS = (
    "id", "owner_id", "kind", "state", "progress", "message", "created_at", "updated_at",
    "expires_at", "result", "error_code", "error_message",
)  # fmt: skip


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


def post_jobs(
    conn: Connection | Session, job_ids: Sequence[uuid.UUID], *, now: datetime
) -> dict[uuid.UUID, PostOutcome]:
    """Apply each `ledger.transaction` job of `job_ids` and mark it SUCCESS; by job id.

    One statement, atomic by itself: on an autocommit connection it needs no
    BEGIN or COMMIT round trip; inside a caller's transaction it joins it. A
    job id given twice is posted once (the second is skipped).
    """
    rows = conn.execute(
        _POST_JOBS,
        {"job_ids": [str(i) for i in job_ids], "now": now, "unfinished": list(UNFINISHED)},
    ).all()
    outcomes: dict[uuid.UUID, PostOutcome] = {}
    for row in rows:
        outcome = _outcome(row)
        # A duplicate's second row says "skipped": the first one's outcome stands.
        if row.r_job_id not in outcomes or not outcome.skipped:
            outcomes[row.r_job_id] = outcome
    return outcomes


def post_and_finish(conn: Connection | Session, job_id: uuid.UUID, *, now: datetime) -> PostOutcome:
    """`post_jobs` for one job."""
    return post_jobs(conn, [job_id], now=now)[job_id]


def _outcome(row: Any) -> PostOutcome:
    if row.r_id is None:
        return PostOutcome(row.r_claimed_owner, None, has_webhooks=bool(row.r_has_webhooks))
    status = status_from_row(
        SimpleNamespace(**{c: getattr(row, f"r_{c}") for c in _STATUS_COLUMNS})
    )
    summary = f"{row.r_entry_type} of {row.r_amount} posted; balance {status['result']['balance']}"
    return PostOutcome(row.r_claimed_owner, status, summary, bool(row.r_has_webhooks))

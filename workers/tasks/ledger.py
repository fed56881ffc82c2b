"""Ledger jobs: one transaction, or a random batch of them."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from infra import tracing
from shared import jobs, ledger
from shared.jobs.lifecycle import announce_outcome
from shared.ledger import job_posting
from shared.ledger.wallet_cache import invalidate_user, user_scope
from workers import ledger_batches
from workers.job_run import JobRun, end_revoked_if_cancelled, run_job
from workers.poison import JobTask
from workers.runtime import resources
from workers.tasks.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

# Transient database trouble (a restart, a dropped connection) is retried; the
# job-row lock and the (job, seq) unique key make a retried posting apply once.
LEDGER_RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_backoff_jitter": False,
    # 1+2+4+8+16+30+30+30 s: a database restart of up to two minutes is waited out.
    "max_retries": 8,
}


class BatchedPosting(JobTask):
    """A task whose messages the consumer may gather into batches (tuning/celery_ledger_batches.py).

    The strategy falls back to Celery's own when the `ledger_batches`
    adjustment is off; a message a batch does not finish runs this task as usual.
    """

    Strategy = "tuning.celery_ledger_batches:strategy"
    # The pool side of a batch (workers/ledger_batches.py).
    run_batch = staticmethod(ledger_batches.run_batch)
    run_batch_by_name = staticmethod(ledger_batches.run_batch_by_name)


# Time limits come from each kind's declaration (shared/jobs/kinds.py), applied by the app.
@shared_task(
    name="ledger.transaction", bind=True, ignore_result=True, base=BatchedPosting, **LEDGER_RETRY
)
def transaction(self: Task, job_id: str) -> None:
    """Post one credit or debit for the job's owner."""
    if not _post_in_one_statement(self, job_id):
        run_job(self, job_id, _post_one)


def _post_in_one_statement(task: Task, job_id: str) -> bool:
    """The PostgreSQL fast path (shared/ledger/job_posting.py); False: take the general path.

    The general path also handles what this one does not: SQLite, a malformed
    id, and a debit that would overdraw (it fails the job with its code).
    """
    res = resources(task.app)
    parsed = jobs.parse_job_id(job_id)
    if parsed is None or not res.supports_one_statement_posting:
        return False
    # One statement, atomic by itself: autocommit saves the BEGIN/COMMIT trips.
    with res.autocommit_engine.connect() as conn:
        outcome = job_posting.post_and_finish(conn, parsed, now=jobs.utcnow())
    if outcome.skipped:
        end_revoked_if_cancelled(task, res, parsed)
        log.info("job %s already finished; skipping", job_id)
        return True
    if outcome.refused:
        return False
    # Committed. One Redis trip: the cache invalidated, then SUCCESS published,
    # so a read after SUCCESS is fresh.
    announce_outcome(
        res.statuses,
        res.notifications,
        outcome.owner_id,
        tracing.with_trace_id(outcome.status),
        outcome.summary,
        webhooks=webhook_outbox(task.app) if outcome.has_webhooks else None,
        first=lambda pipe: res.cache.invalidate(user_scope(outcome.owner_id), pipe=pipe),
    )
    return True


def _post_one(run: JobRun) -> str:
    params = run.params
    with run.transaction() as session:
        posting = ledger.post(
            session,
            user_id=run.job.owner_id,
            entry_type=params["type"],
            amount=params["amount"],
            description=params.get("description", ""),
            job_id=run.job.id,
        )
        run.complete(
            session, {"transaction_id": posting.entry_id, "balance": posting.balance_after}
        )
    # Committed; SUCCESS is published only after we return, so a read after it is fresh.
    invalidate_user(run.res.cache, run.job.owner_id)
    return f"{params['type']} of {params['amount']} posted; balance {posting.balance_after}"


@shared_task(name="ledger.random", bind=True, ignore_result=True, **LEDGER_RETRY)
def random_batch(self: Task, job_id: str) -> None:
    """Post 1-10 random transactions that never overdraw, reporting progress."""
    run_job(self, job_id, _post_batch)


def _post_batch(run: JobRun) -> str:
    plan = ledger.plan_random_batch(run.job.id, run.params["count"])
    posted = []
    # Each entry commits on its own so progress reports real postings; a
    # redelivery re-plans the same batch and skips the (job, seq) already posted.
    for seq, planned in enumerate(plan[:-1]):
        with run.transaction() as session:
            posting = ledger.post_random_entry(
                session, user_id=run.job.owner_id, job_id=run.job.id, seq=seq, planned=planned
            )
        invalidate_user(run.res.cache, run.job.owner_id)
        posted.append(posting.entry_id)
        run.progress(int(100 * (seq + 1) / len(plan)), f"posted {seq + 1} of {len(plan)}")
    with run.transaction() as session:
        posting = ledger.post_random_entry(
            session,
            user_id=run.job.owner_id,
            job_id=run.job.id,
            seq=len(plan) - 1,
            planned=plan[-1],
        )
        posted.append(posting.entry_id)
        run.complete(
            session,
            {"transaction_ids": posted, "count": len(posted), "balance": posting.balance_after},
        )
    invalidate_user(run.res.cache, run.job.owner_id)
    return f"{len(posted)} random transactions posted; balance {posting.balance_after}"

"""Poison jobs: a job whose runs keep killing their worker process fails, and is not run again.

A run is lost when its worker process dies under it: SIGKILL, the OOM
killer, a segfault in a library. Messages are acked late, so without a
bound such a job is redelivered and kills the next worker, for ever.

Two places notice a lost run, and each run counts once in `jobs.lost_runs`:
- a prefork worker's main process, when the pool child running the job dies
  (workers/poison.py); it puts the row back to PENDING before the message is
  requeued, so the next claim does not count the run again;
- the next claim of the job, when it finds the row still STARTED: no parent
  survived to say so (a gevent or solo worker died whole) and the message
  came back through its lease or RabbitMQ's requeue (shared/jobs/claims.py).
At `POISON_MAX_LOST_RUNS` the job ends FAILURE with code `worker_lost`:
from the main process its message is acked instead of requeued, at a claim
the attempt ends before running anything. Replay works on it like on any
failed job (shared/jobs/replay.py). A ledger batch a worker loses does not
count against its jobs: each then runs on its own, where its runs count.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, literal, select, update

from shared.jobs.claims import finish_job
from shared.jobs.model import UNFINISHED, JobError, status_from_row, utcnow
from shared.jobs.records import STATUS_COLUMNS
from shared.models import Job

WORKER_LOST = "worker_lost"

_JOBS = Job.__table__
# SKIP LOCKED: the dead run's database session may still hold the job row (its
# transaction ends when the server notices the client is gone, up to the TCP
# keep-alive's ~25 s); the worker's main process does not wait for it. The run
# is then counted by the next claim, which finds the row still STARTED.
_UNLOCKED_UNFINISHED = (
    select(_JOBS.c.id)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state.in_([literal(state) for state in UNFINISHED]),
    )
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_RECORD_LOST = (
    update(_JOBS)
    .where(_JOBS.c.id == _UNLOCKED_UNFINISHED)
    .values(
        lost_runs=_JOBS.c.lost_runs + 1,
        state="PENDING",
        message="requeued: its worker process died",
        updated_at=bindparam("now", type_=_JOBS.c.updated_at.type),
    )
    .returning(*(_JOBS.c[column.key] for column in STATUS_COLUMNS), _JOBS.c.lost_runs)
)


class LostRun(NamedTuple):
    """A lost run, recorded: the job's owner, its count, and its status now (PENDING or FAILURE)."""

    owner_id: int
    lost_runs: int
    status: dict[str, Any]
    quarantined: bool
    has_webhooks: bool = False


def quarantine_error(lost_runs: int) -> JobError:
    """The error a poison job fails with."""
    return JobError(
        WORKER_LOST,
        f"its worker process died while running it {lost_runs} times; it is not run again "
        "(an admin can replay it)",
    )


def is_poison(lost_runs: int, max_lost_runs: int) -> bool:
    """Whether a job that lost `lost_runs` runs must not run again."""
    return lost_runs >= max_lost_runs


def record_lost_run(conn: Connection, job_id: uuid.UUID, max_lost_runs: int) -> LostRun | None:
    """Count a run of `job_id` its worker process died under; fail it at `max_lost_runs`.

    None when the job is not unfinished (finished, cancelled, unknown: not a
    job's message) or its row is still locked by the dead run's session (the
    next claim counts the run then). `conn` should be autocommit: each
    statement is atomic.
    """
    row = conn.execute(_RECORD_LOST, {"job_id": job_id, "now": utcnow()}).first()
    if row is None:
        return None
    if not is_poison(row.lost_runs, max_lost_runs):
        return LostRun(row.owner_id, row.lost_runs, status_from_row(row), quarantined=False)
    finished = finish_job(conn, job_id, state="FAILURE", error=quarantine_error(row.lost_runs))
    if finished is None:  # a cancel got there in between
        return None
    return LostRun(row.owner_id, row.lost_runs, finished.status, True, finished.has_webhooks)

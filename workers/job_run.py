"""Running one attempt of a job: claim, progress, outcome, notification."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from infra import tracing
from infra.broker.config import delayable_countdown
from shared import jobs
from shared.jobs import ClaimedJob, JobError, poison
from shared.jobs import status as job_status
from shared.jobs.claims import cancelled_among, finish_job
from shared.jobs.lifecycle import announce_outcome
from shared.jobs.status_scripts import StatusPipeline
from shared.resources import Resources
from workers.revocation import revoked
from workers.runtime import resources
from workers.tasks.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobSuperseded(Exception):
    """The job was cancelled or finished by someone else while this attempt ran."""


class JobRun:
    """One attempt at a claimed job, as seen by the task body."""

    def __init__(self, task: Task, res: Resources, job: ClaimedJob) -> None:
        self.task = task
        self.res = res
        self.job = job
        self.final_status: dict[str, Any] | None = None
        # Traced, every document of this attempt names its trace (the task run's).
        self.status: dict[str, Any] = tracing.with_trace_id(job_status.started_document(job))
        # Whether the owner has webhook endpoints, as the finishing statement saw it.
        self._has_webhooks = True
        # The STARTED document not yet written: it goes with the next write, in its trip.
        self._start_pending = False
        # A progress update (percent, message) not yet written: likewise.
        self._deferred: tuple[int, str] | None = None
        # Writes that ride the outcome's trip (after the STARTED document, if pending).
        self._with_outcome: list[Callable[[redis.client.Pipeline], None]] = []

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, percent: int, message: str, *, defer: bool = False) -> None:
        """Publish live progress (Redis only; the row records transitions).

        `defer`: not in a trip of its own, but with the attempt's next Redis
        write (see `ride`): for progress the work reports just before
        it makes a trip of its own anyway.
        """
        if defer:
            self._deferred = (percent, message)
            return
        statuses = self.res.statuses
        try:
            if self._has_pending():
                # What is pending, then this progress, in this order, in one trip.
                pipe = statuses.pipeline()
                self._queue_pending(pipe)
                updated = _progress_document(self.status, percent, message)
                statuses.write(self.job.owner_id, updated, event="progress", pipe=pipe)
                pipe.execute()
                self.status = updated
            else:
                self.status = statuses.progress(self.job.owner_id, self.status, percent, message)
        except redis.RedisError:
            log.warning("progress not published: Redis unavailable", exc_info=True)

    def ride(self, pipe: redis.client.Pipeline) -> Callable[[list[Any]], object] | None:
        """Queue the pending STARTED document and deferred progress on `pipe`, another's trip.

        For a trip the work makes anyway: its owner executes `pipe`, then
        passes all of its answers to the callable returned (None: nothing
        was pending), which re-runs a status script Redis had lost. A write
        that fails there only loses this live status (the row has it).
        """
        if not self._has_pending():
            return None
        statuses = StatusPipeline(pipe)
        self._queue_pending(statuses)
        return statuses.settle

    def _queue_pending(self, pipe: redis.client.Pipeline | StatusPipeline) -> None:
        self._queue_start(pipe)
        if self._deferred is not None:
            percent, message = self._deferred
            self._deferred = None
            updated = _progress_document(self.status, percent, message)
            self.res.statuses.write(self.job.owner_id, updated, event="progress", pipe=pipe)
            self.status = updated

    def with_outcome(self, queue: Callable[[redis.client.Pipeline], None]) -> None:
        """Queue `queue`'s Redis writes on the pipeline that announces the job's outcome.

        Best effort, as the announcement is: for bookkeeping such as counters,
        one trip fewer than sending them on their own.
        """
        self._with_outcome.append(queue)

    def _queue_first(self, pipe: redis.client.Pipeline) -> None:
        self._queue_pending(pipe)
        for queue in self._with_outcome:
            queue(pipe)
        self._with_outcome.clear()

    def _has_pending(self) -> bool:
        return self._start_pending or self._deferred is not None

    def _queue_start(self, pipe: redis.client.Pipeline) -> None:
        if self._start_pending:
            self._start_pending = False
            self.res.statuses.write(self.job.owner_id, self.status, pipe=pipe)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction that holds the job row, so the effect and completion commit together."""
        with self.res.sessions.begin() as session:
            if not jobs.lock_unfinished(session, self.job.id):
                raise JobSuperseded(str(self.job.id))
            yield session

    def complete(self, session: Session, result: dict[str, Any], message: str = "done") -> None:
        """Mark the job SUCCESS inside the caller's transaction."""
        finished = finish_job(session, self.job.id, state="SUCCESS", result=result, message=message)
        if finished is None:
            raise JobSuperseded(str(self.job.id))
        self.final_status, self._has_webhooks = finished

    def succeed(self, result: dict[str, Any], message: str = "done") -> None:
        """Mark the job SUCCESS in one statement of its own (a job whose result is its effect).

        Autocommit: no BEGIN/COMMIT or row-lock trips. The statement is
        conditional on the job being unfinished, so a cancel or a duplicate
        delivery that finished it first makes this attempt a no-op.
        """
        finished = one_statement(
            self.res,
            lambda conn: finish_job(
                conn, self.job.id, state="SUCCESS", result=result, message=message
            ),
        )
        if finished is None:
            raise JobSuperseded(str(self.job.id))
        self.final_status, self._has_webhooks = finished

    def retry(self, exc: BaseException, countdown: float, message: str) -> Retry:
        """Record RETRY and return Celery's Retry for the task to raise."""
        one_statement(self.res, lambda conn: jobs.mark_state(conn, self.job.id, "RETRY", message))
        self._publish({**self.status, "state": "RETRY", "message": message[:255]})
        countdown = delayable_countdown(self.task.app.conf.broker_url, countdown)
        return self.task.retry(exc=exc, countdown=countdown)

    def _publish(self, status: dict[str, Any]) -> None:
        status = {**status, "updated_at": jobs.isoformat(jobs.utcnow())}
        if self._has_pending():
            try:
                pipe = self.res.statuses.pipeline()
                self._queue_pending(pipe)
                self.res.statuses.write(self.job.owner_id, status, pipe=pipe)
                pipe.execute()
            except redis.RedisError:
                log.warning("status of job %s not published: Redis unavailable", self.job.id)
        else:
            job_status.publish(self.res.statuses, self.job.owner_id, status)
        self.status = status

    def fail(self, error: JobError) -> None:
        """Record FAILURE with the error's code, unless the job already ended."""
        finished = one_statement(
            self.res, lambda conn: finish_job(conn, self.job.id, state="FAILURE", error=error)
        )
        if finished is not None:
            self._has_webhooks = finished.has_webhooks
            self._announce(finished.status, error.message)

    def succeeded(self, summary: str) -> None:
        assert self.final_status is not None
        self._announce(self.final_status, summary)

    def _announce(self, status: dict[str, Any], message: str) -> None:
        status = tracing.with_trace_id(status)
        announce_outcome(
            self.res.statuses,
            self.res.notifications,
            self.job.owner_id,
            status,
            message,
            webhooks=webhook_outbox(self.task.app) if self._has_webhooks else None,
            # A STARTED document still pending goes first, so its event precedes the outcome's.
            first=self._queue_first if self._has_pending() or self._with_outcome else None,
        )
        self.status = status


def end_revoked_if_cancelled(task: Task, res: Resources, job_id: uuid.UUID) -> None:
    """Raise Celery's REVOKED ending (workers/revocation.py) when the owner cancelled the job.

    For a job this attempt did not claim or could not finish: cancelled, or
    finished by another delivery (then the task simply returns).
    """
    if job_id in one_statement(res, lambda conn: cancelled_among(conn, [job_id])):
        raise revoked(task, str(job_id))


def one_statement(res: Resources, statement: Callable[[Connection], T]) -> T:
    """Run one job-row statement, atomic by itself, on an autocommit connection.

    Autocommit saves the BEGIN/COMMIT round trips. The pool pings a connection
    only after it sat idle (shared/resources.py), so one the server dropped a
    moment ago can still reach us: its statement fails before anything was
    written, the pool discards it, and the statement runs once more on a new
    connection. Each of these statements is conditional on the job's state,
    so a second run can only find the first's work done.
    """
    for attempt in (1, 2):
        try:
            with res.autocommit_engine.connect() as conn:
                return statement(conn)
        except DBAPIError as error:
            if attempt == 2 or not error.connection_invalidated:
                raise
            log.warning("database connection lost; running the statement again on a new one")
    raise AssertionError("unreachable")


def _progress_document(status: dict[str, Any], percent: int, message: str) -> dict[str, Any]:
    # What StatusStore.progress writes, for a write queued on a pipeline (that
    # method sends its own trip).
    return {
        **status,
        "state": "PROGRESS",
        "progress": max(0, min(100, int(percent))),
        "message": message[:255],
        "updated_at": jobs.isoformat(jobs.utcnow()),
    }


def run_job(
    task: Task,
    job_id: str,
    work: Callable[[JobRun], str],
    *,
    start_with_first_write: bool = False,
) -> None:
    """Claim `job_id` and run `work`, which commits via `run.complete` and returns a summary.

    `start_with_first_write`: the STARTED document is not written on its own
    but with the attempt's first write (its first progress, or its outcome),
    in that write's round trip; for work that reports progress at once.
    """
    res = resources(task.app)
    parsed = jobs.parse_job_id(job_id)
    if parsed is None:
        log.error("dropping message with a malformed job id %r", job_id)
        return
    job = one_statement(res, lambda conn: jobs.claim(conn, parsed))
    if job is None:
        end_revoked_if_cancelled(task, res, parsed)
        log.info("job %s already finished; skipping", job_id)
        return
    run = JobRun(task, res, job)
    if poison.is_poison(job.lost_runs, res.settings.poison_max_lost_runs):
        # Its earlier runs died with their worker process: this one does not start.
        error = poison.quarantine_error(job.lost_runs)
        log.error("job %s quarantined: %s", job_id, error.message)
        run.fail(error)
        return
    if start_with_first_write:
        run._start_pending = True
    else:
        run._publish(run.status)
    try:
        summary = work(run)
    except Retry:
        raise
    except JobSuperseded:
        log.info("job %s was cancelled or finished elsewhere; its effect was rolled back", job_id)
        end_revoked_if_cancelled(task, res, parsed)
        return
    except JobError as exc:
        run.fail(exc)
        return
    except SoftTimeLimitExceeded:
        run.fail(JobError("timeout", "the job ran past its time limit"))
        return
    except Exception:
        run.fail(JobError("internal_error", "the job failed unexpectedly"))
        raise
    run.succeeded(summary)

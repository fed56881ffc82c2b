"""Submitting a job: the one path every submission takes (API routes, login's job).

Record it (one INSERT, admission and Idempotency-Key included), then publish
its message (one broker write carrying only the job id). If the broker is
down, the row is deleted and BrokerError raised, so "accepted" always means
"on the broker" and a retry with the same Idempotency-Key starts clean.

`submit` does this for one job; `submit_many` for a batch of concurrent
submissions at once (the API's group commit, shared/jobs/group_commit.py):
one INSERT and one broker round trip for all of them, each job keeping its
own outcome.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import Connection

from infra import tracing
from infra.broker.messages import BrokerError, JobMessage, Publisher
from infra.settings import Settings
from shared.jobs import admission_batch, records
from shared.jobs.kinds import KIND_QUEUES
from shared.jobs.model import (
    IdempotencyKeyReused,
    Submission,
    TooManyInflightJobs,
    isoformat,
    parse_job_id,
    request_hash,
    utcnow,
)
from shared.jobs.records import create_job, delete_job
from shared.jobs.status import StatusStore

__all__ = ["BrokerError", "Outcome", "PreparedJob", "submit", "submit_many"]

log = logging.getLogger(__name__)


def submit(
    conn: Connection,
    publisher: Publisher,
    settings: Settings,
    *,
    owner_id: int,
    kind: str,
    params: dict[str, Any],
    headers: dict[str, Any],
    idempotency_key: str | None = None,
    request_payload: dict[str, Any] | None = None,
    admission: bool = True,
) -> Submission:
    """Record and publish a job of `kind` for `owner_id`; a replay publishes nothing.

    `conn` should be an autocommit connection (the INSERT is atomic on its own).
    `request_payload` is what an Idempotency-Key compares; `admission=False`
    skips the in-flight cap (the job the system itself starts at login).
    Raises TooManyInflightJobs, IdempotencyKeyReused or BrokerError.
    """
    job = PreparedJob(
        owner_id=owner_id,
        kind=kind,
        params=params,
        headers=headers,
        idempotency_key=idempotency_key,
        request_fingerprint=(
            request_hash(kind, request_payload or params) if idempotency_key else None
        ),
        max_inflight=settings.max_inflight_jobs if admission else None,
    )
    outcome = _record_and_publish(conn, publisher, settings, job)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@dataclass(frozen=True)
class PreparedJob:
    """A validated submission, ready for its batch: everything but the database's verdict."""

    owner_id: int
    kind: str
    params: dict[str, Any]
    headers: dict[str, Any]
    idempotency_key: str | None = None
    # request_hash(kind, payload) when there is a key: what a replay must match.
    request_fingerprint: str | None = None
    # MAX_INFLIGHT_JOBS, or None for a job the system itself starts.
    max_inflight: int | None = None


# What each job of a batch ends with: its Submission, or the exception its
# request answers with (TooManyInflightJobs, IdempotencyKeyReused, BrokerError).
Outcome = Submission | Exception


def submit_many(
    conn: Connection,
    publisher: Publisher,
    statuses: StatusStore | None,
    settings: Settings,
    jobs: Sequence[PreparedJob],
) -> list[Outcome]:
    """Record, publish and announce a batch of jobs; one outcome per job, in order.

    On PostgreSQL: ONE multi-row INSERT (shared/jobs/admission_batch.py: each
    row its own admission verdict), then the rows it could not decide alone (a
    keyed row whose key is taken or repeated in the batch) on the single path,
    one by one: replay, 422 or 429 exactly as a lone request gets them. Then
    ONE broker round trip for every new job's message; when the broker is the
    status Redis (settings.redis_url), the PENDING documents, queue tickets and
    first events ride in the same pipeline, else one more pipelined trip. A job
    whose message did not reach the broker is deleted and ends with
    BrokerError, as does a replay of it. `conn` should be autocommit.
    On SQLite (development) each job takes the single path.
    """
    if not admission_batch.supports_batch_insert(conn):
        return [_submit_alone(conn, publisher, statuses, settings, job) for job in jobs]
    now = utcnow()
    expires_at = now + timedelta(seconds=settings.job_ttl_seconds)
    rows = [
        admission_batch.JobRow(
            id=uuid.uuid4(),
            owner_id=job.owner_id,
            kind=job.kind,
            queue=KIND_QUEUES[job.kind],
            params=job.params,
            idempotency_key=job.idempotency_key,
            request_hash=job.request_fingerprint,
            max_inflight=job.max_inflight,
        )
        for job in jobs
    ]
    inserted = admission_batch.insert_jobs(conn, rows, now=now, expires_at=expires_at)
    times = (isoformat(now), isoformat(expires_at))
    outcomes: list[Outcome] = []
    fresh: list[int] = []  # indexes of jobs with a new row to publish
    for index, (job, row) in enumerate(zip(jobs, rows, strict=True)):
        if row.id in inserted:
            outcome: Outcome = Submission(_pending(row.id, job.kind, *times), replayed=False)
        elif job.idempotency_key is None:
            outcome = TooManyInflightJobs(job.owner_id)
        else:
            outcome = _record_alone(conn, settings, job)
        if isinstance(outcome, Submission) and not outcome.replayed:
            fresh.append(index)
        outcomes.append(outcome)
    if fresh and tracing.ACTIVE:
        _traced(conn, jobs, outcomes, fresh)
    if fresh:
        _publish(conn, publisher, statuses, settings, jobs, outcomes, fresh)
    return outcomes


def _traced(
    conn: Connection, jobs: Sequence[PreparedJob], outcomes: list[Outcome], fresh: list[int]
) -> None:
    """Each traced job's trace id in its PENDING document, and its context on its row.

    The row keeps a sampled traceparent so that a re-published message (the
    lost-message sweep, the stuck-job reaper) continues the job's trace.
    """
    kept = []
    for i in fresh:
        traceparent = jobs[i].headers.get("traceparent")
        status = outcomes[i].status  # type: ignore[union-attr]
        trace_id = tracing.trace_id_of(traceparent)
        if trace_id:
            status["trace_id"] = trace_id
        if tracing.is_sampled(traceparent):
            kept.append((status["task_id"], traceparent))
    if kept:
        records.remember_trace_parents(conn, kept)


def _record_alone(conn: Connection, settings: Settings, job: PreparedJob) -> Outcome:
    """The single path's INSERT for one job (records.create_job), its refusal as a value."""
    try:
        return create_job(
            conn,
            owner_id=job.owner_id,
            kind=job.kind,
            params=job.params,
            idempotency_key=job.idempotency_key,
            request_fingerprint=job.request_fingerprint,
            ttl_seconds=settings.job_ttl_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            max_inflight=job.max_inflight,
        )
    except (TooManyInflightJobs, IdempotencyKeyReused) as exc:
        return exc


def _publish(
    conn: Connection,
    publisher: Publisher,
    statuses: StatusStore | None,
    settings: Settings,
    jobs: Sequence[PreparedJob],
    outcomes: list[Outcome],
    fresh: list[int],
) -> None:
    """Publish the fresh jobs (and their PENDING documents); failures become BrokerError."""
    accepted = [(jobs[i].owner_id, outcomes[i].status) for i in fresh]  # type: ignore[union-attr]
    messages = [
        JobMessage(jobs[i].kind, status["task_id"], KIND_QUEUES[jobs[i].kind], jobs[i].headers)
        for i, (_, status) in zip(fresh, accepted, strict=True)
    ]
    shared_trip = statuses is not None and publisher.shares_redis(settings.redis_url)
    if shared_trip:

        def announce(pipe: Any) -> None:
            for owner_id, status in accepted:
                statuses.queue_enqueued(pipe, owner_id, status)  # type: ignore[union-attr]

        errors, answers = publisher.publish_many(messages, announce)
    else:
        errors, answers = publisher.publish_many(messages)
    lost = [i for i, error in zip(fresh, errors, strict=True) if error is not None]
    if lost:
        # Nothing was accepted for these: remove the rows so a retry starts clean.
        admission_batch.delete_unpublished(
            conn,
            [uuid.UUID(outcomes[i].status["task_id"]) for i in lost],  # type: ignore[union-attr]
        )
        gone = {outcomes[i].status["task_id"] for i in lost}  # type: ignore[union-attr]
        for i, error in zip(fresh, errors, strict=True):
            if error is not None:
                outcomes[i] = error
        for i, outcome in enumerate(outcomes):
            # A replay of a job of this batch that has just been removed.
            if isinstance(outcome, Submission) and outcome.status["task_id"] in gone:
                outcomes[i] = BrokerError("broker unavailable")
    if statuses is None:
        return
    published = [entry for entry, error in zip(accepted, errors, strict=True) if error is None]
    if shared_trip:
        if answers:
            _settle(statuses, accepted, answers)
    elif published:
        pipe = statuses.pipeline()
        for owner_id, status in published:
            statuses.queue_enqueued(pipe, owner_id, status)
        try:
            _settle(statuses, published, pipe.execute(raise_on_error=False))
        except redis.RedisError:
            _without_documents(published)


def _settle(statuses: StatusStore, entries: list[tuple[int, dict]], answers: list[Any]) -> None:
    try:
        statuses.settle_enqueued(entries, answers)
    except redis.RedisError:
        _without_documents(entries)
        return
    failed = [entry for entry, answer in zip(entries, answers, strict=True) if _is_error(answer)]
    if failed:
        _without_documents(failed)


def _is_error(answer: Any) -> bool:
    return isinstance(answer, Exception) and not isinstance(answer, redis.exceptions.NoScriptError)


def _without_documents(entries: list[tuple[int, dict]]) -> None:
    # The jobs are on the broker: they run; their polls read the row (no queue
    # position) until a worker writes.
    log.warning(
        "%d job(s) accepted without their live documents: Redis unavailable (first %s)",
        len(entries),
        entries[0][1]["task_id"],
    )


def _pending(job_id: uuid.UUID, kind: str, created: str | None, expires: str | None) -> dict:
    """status_from_row of a row just inserted by the batch (no read back)."""
    return {
        "task_id": str(job_id),
        "kind": kind,
        "state": "PENDING",
        "progress": 0,
        "message": "queued",
        "created_at": created,
        "updated_at": created,
        "expires_at": expires,
        "result": None,
        "error": None,
    }


def _record_and_publish(
    conn: Connection, publisher: Publisher, settings: Settings, job: PreparedJob
) -> Outcome:
    """The single path: record one job, publish it; a job the broker refused is removed again."""
    submission = _record_alone(conn, settings, job)
    if not isinstance(submission, Submission) or submission.replayed:
        return submission
    task_id = submission.status["task_id"]
    try:
        publisher.publish(job.kind, task_id, KIND_QUEUES[job.kind], job.headers)
    except BrokerError as exc:
        # Nothing was accepted: remove the record so a retry starts clean.
        delete_job(conn, parse_job_id(task_id))
        return exc
    return submission


def _submit_alone(
    conn: Connection,
    publisher: Publisher,
    statuses: StatusStore | None,
    settings: Settings,
    job: PreparedJob,
) -> Outcome:
    """The single path for one job of a batch (SQLite): record, publish, PENDING document."""
    submission = _record_and_publish(conn, publisher, settings, job)
    if isinstance(submission, Submission) and not submission.replayed and tracing.ACTIVE:
        _traced(conn, [job], [submission], [0])
    if isinstance(submission, Submission) and not submission.replayed and statuses is not None:
        try:
            statuses.record_enqueued(job.owner_id, submission.status)
        except redis.RedisError:
            _without_documents([(job.owner_id, submission.status)])
    return submission

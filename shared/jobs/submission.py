"""Submitting a job: the one path every submission takes (API routes, login's job).

Record it (one INSERT, admission and Idempotency-Key included), then publish
its message (one broker write carrying only the job id). If the broker is
down, the row is deleted and BrokerError raised, so "accepted" always means
"on the broker" and a retry with the same Idempotency-Key starts clean.
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Connection

from shared.broker.publish import Publisher
from shared.jobs.kinds import KIND_QUEUES
from shared.jobs.model import Submission, parse_job_id, request_hash
from shared.jobs.records import create_job, delete_job
from shared.settings import Settings

__all__ = ["BrokerError", "submit"]


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
    submission = create_job(
        conn,
        owner_id=owner_id,
        kind=kind,
        params=params,
        idempotency_key=idempotency_key,
        request_fingerprint=(
            request_hash(kind, request_payload or params) if idempotency_key else None
        ),
        ttl_seconds=settings.job_ttl_seconds,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        max_inflight=settings.max_inflight_jobs if admission else None,
    )
    if submission.replayed:
        return submission
    task_id = submission.status["task_id"]
    try:
        publisher.publish(kind, task_id, KIND_QUEUES[kind], headers)
    except BrokerError:
        # Nothing was accepted: remove the record so a retry starts clean.
        delete_job(conn, parse_job_id(task_id))
        raise
    return submission

"""Submitting a job: record it, publish it, answer 202; concurrent submissions share the trips.

The record (one INSERT), the broker message and the PENDING document, queue
ticket and first event (shared/jobs/status) are written for a batch of
concurrent submissions at once (shared/jobs/submission.submit_many).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Response, g, jsonify, request, url_for

from api.admission import ensure_queue_capacity, too_many_inflight
from api.errors import ApiError
from api.extensions import resources, submit_batcher
from api.limits import suggest_poll_interval
from api.metrics import JOBS_ACCEPTED
from api.security import current_identity
from shared import jobs
from shared.jobs.submission import PreparedJob

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255
# The 202's Retry-After: a new job starts within a second or two when workers keep up.
FIRST_POLL_SECONDS = 1


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header, validated (≤255 printable characters)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            422,
            "validation_error",
            "Idempotency-Key must be 1-255 printable characters",
            [{"field": "Idempotency-Key", "message": "1-255 printable characters"}],
        )
    return key


def submit(kind: str, params: dict[str, Any], request_payload: dict[str, Any]) -> Response:
    """Record and enqueue a job of `kind`; `request_payload` is what Idempotency-Key compares.

    The job joins this process's group commit (api/extensions.submit_batcher):
    concurrent submissions share one INSERT and one broker round trip, and
    each still gets its own answer: 202, a replay, 422, 429 or 503.
    """
    res = resources()
    owner_id = current_identity().user_id
    key = idempotency_key()
    ensure_queue_capacity(jobs.KIND_QUEUES[kind])
    outcome = submit_batcher().run(
        PreparedJob(
            owner_id=owner_id,
            kind=kind,
            params=params,
            headers=message_headers(owner_id),
            idempotency_key=key,
            request_fingerprint=jobs.request_hash(kind, request_payload) if key else None,
            max_inflight=res.settings.max_inflight_jobs,
        )
    )
    if isinstance(outcome, Exception):
        raise _refusal(outcome, res.settings.max_inflight_jobs)
    if not outcome.replayed:
        JOBS_ACCEPTED.labels(kind).inc()
    return accepted(kind, outcome.status["task_id"], replayed=outcome.replayed)


def _refusal(outcome: Exception, max_inflight: int) -> Exception:
    """The API error a refused submission answers with (BrokerError: the 503 handler's)."""
    if isinstance(outcome, jobs.TooManyInflightJobs):
        return too_many_inflight(max_inflight)
    if isinstance(outcome, jobs.IdempotencyKeyReused):
        return ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            [{"field": "Idempotency-Key", "message": "reused with a different body"}],
        )
    return outcome


def record_enqueued(owner_id: int, status: dict[str, Any]) -> None:
    """The accepted job's PENDING document, queue ticket and first event; best effort.

    The job is already on the broker: without Redis it still runs, and its
    polls read the row (with no queue position) until a worker writes.
    """
    try:
        resources().statuses.record_enqueued(owner_id, status)
    except redis.RedisError:
        log.warning(
            "job %s accepted without its live document: Redis unavailable", status["task_id"]
        )


def message_headers(owner_id: int) -> dict[str, Any]:
    """What a job's message carries besides its id: who asked, and in which request."""
    return {"request_id": g.get("request_id"), "user_id": owner_id}


def accepted(kind: str, task_id: str, *, replayed: bool = False) -> Response:
    status_url = url_for("tasks.get_task", task_id=task_id)
    response = jsonify(
        {"task_id": task_id, "kind": kind, "state": "PENDING", "status_url": status_url}
    )
    response.status_code = 202
    response.headers["Location"] = status_url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return suggest_poll_interval(response, FIRST_POLL_SECONDS)

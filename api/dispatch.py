"""Submitting a job: record it (one INSERT), publish it (one broker message), answer 202."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request, url_for
from kombu.exceptions import OperationalError as BrokerError

from api.admission import ensure_queue_capacity, too_many_inflight
from api.errors import ApiError
from api.extensions import publisher, resources
from api.metrics import JOBS_ACCEPTED
from api.security import current_identity
from shared import jobs

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255


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
    """Record and enqueue a job of `kind`; `request_payload` is what Idempotency-Key compares."""
    res = resources()
    owner_id = current_identity().user_id
    key = idempotency_key()
    ensure_queue_capacity(jobs.KIND_QUEUES[kind])
    # A single INSERT ... ON CONFLICT is atomic by itself: an autocommit
    # connection saves the BEGIN and COMMIT round trips on the hottest write path.
    with res.autocommit_engine.connect() as conn:
        try:
            submission = jobs.create_job(
                conn,
                owner_id=owner_id,
                kind=kind,
                params=params,
                idempotency_key=key,
                request_fingerprint=jobs.request_hash(kind, request_payload) if key else None,
                ttl_seconds=res.settings.job_ttl_seconds,
                idempotency_ttl_seconds=res.settings.idempotency_ttl_seconds,
                max_inflight=res.settings.max_inflight_jobs,
            )
        except jobs.TooManyInflightJobs:
            raise too_many_inflight(res.settings.max_inflight_jobs) from None
        except jobs.IdempotencyKeyReused:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
                [{"field": "Idempotency-Key", "message": "reused with a different body"}],
            ) from None
        task_id = submission.status["task_id"]
        if not submission.replayed:
            try:
                publish(kind, task_id, owner_id)
            except BrokerError:
                # Nothing was accepted: remove the record so a retry starts clean.
                jobs.delete_job(conn, jobs.parse_job_id(task_id))
                raise
            JOBS_ACCEPTED.labels(kind).inc()
    return accepted(kind, task_id, replayed=submission.replayed)


def publish(kind: str, task_id: str, owner_id: int) -> None:
    """One broker message named after the job's kind, carrying only the job id."""
    publisher().publish(
        kind,
        task_id,
        jobs.KIND_QUEUES[kind],
        {"request_id": g.get("request_id"), "user_id": owner_id},
    )


def accepted(kind: str, task_id: str, *, replayed: bool = False) -> Response:
    status_url = url_for("tasks.get_task", task_id=task_id)
    response = jsonify(
        {"task_id": task_id, "kind": kind, "state": "PENDING", "status_url": status_url}
    )
    response.status_code = 202
    response.headers["Location"] = status_url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response

"""Submitting a job: record it, publish it, answer 202; concurrent submissions share the trips.

The record (one INSERT), the broker message and the PENDING document, queue
ticket and first event (shared/jobs/status) are written for a batch of
concurrent submissions at once (shared/jobs/submission.submit_many).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, current_app, g, request

from api.admission import ensure_queue_capacity, too_many_inflight
from api.errors import ApiError
from api.extensions import resources, submit_batcher
from api.metrics import JOBS_ACCEPTED
from infra import tracing
from shared import jobs
from shared.jobs.submission import PreparedJob
from tuning import flask_accepted

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255
# The 202's Retry-After: a new job starts within a second or two when workers keep up.
FIRST_POLL_SECONDS = 1
_FIRST_POLL = str(FIRST_POLL_SECONDS)
# Where a job's status is polled (api/routes/tasks.py: get_task), below the script root.
TASK_STATUS_PATH = "/api/v1/tasks/"
# Set by create_app when the `accepted_template` adjustment is on.
ACCEPTED_TEMPLATE = "conveyor.tuning.accepted_template"


def idempotency_key(environ: dict[str, Any]) -> str | None:
    """The request's Idempotency-Key header, validated (≤255 printable characters)."""
    # The WSGI variable itself: what request.headers.get("Idempotency-Key") reads.
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
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
    # Every submission passes here: the request, `g` and the app are looked up
    # once each (a context-local lookup is about a microsecond, and the helpers
    # below would otherwise repeat them a dozen times).
    flask_g = g._get_current_object()
    app = current_app._get_current_object()
    settings = app.extensions["conveyor"].settings
    owner_id = flask_g.identity.user_id
    key = idempotency_key(request.environ)
    ensure_queue_capacity(jobs.KIND_QUEUES[kind], app)
    headers = message_headers(owner_id, flask_g)
    # Traced: the job's own producer span, its context in the message headers
    # (an unsampled request's: its traceparent, and no span).
    publish_span = tracing.start_producer(kind, headers) if tracing.ACTIVE else None
    outcome = submit_batcher(app).run(
        PreparedJob(
            owner_id=owner_id,
            kind=kind,
            params=params,
            headers=headers,
            idempotency_key=key,
            request_fingerprint=jobs.request_hash(kind, request_payload) if key else None,
            max_inflight=settings.max_inflight_jobs,
        )
    )
    if publish_span is not None:
        _end_publish_span(publish_span, kind, outcome)
    if isinstance(outcome, Exception):
        raise _refusal(outcome, settings.max_inflight_jobs, owner_id)
    if not outcome.replayed:
        JOBS_ACCEPTED.labels(kind).inc()
    return _accepted(app, flask_g, kind, outcome.status["task_id"], outcome.replayed)


def _end_publish_span(publish_span: Any, kind: str, outcome: Any) -> None:
    publish_span.set_attribute("messaging.destination.name", jobs.KIND_QUEUES[kind])
    publish_span.set_attribute("conveyor.job_kind", kind)
    if isinstance(outcome, Exception):
        tracing.end_span(publish_span, outcome)
        return
    publish_span.set_attribute("messaging.message.id", outcome.status["task_id"])
    publish_span.set_attribute("conveyor.replayed_key", outcome.replayed)
    tracing.end_span(publish_span)


def _refusal(outcome: Exception, max_inflight: int, owner_id: int) -> Exception:
    """The API error a refused submission answers with (BrokerError: the 503 handler's)."""
    if isinstance(outcome, jobs.TooManyInflightJobs):
        return too_many_inflight(max_inflight, owner_id)
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


def message_headers(owner_id: int, flask_g: Any = None) -> dict[str, Any]:
    """What a job's message carries besides its id: who asked, and in which request."""
    request_globals = g if flask_g is None else flask_g
    return {"request_id": request_globals.get("request_id"), "user_id": owner_id}


def _accepted(app: Flask, flask_g: Any, kind: str, task_id: str, replayed: bool) -> Response:
    # url_for("tasks.get_task", task_id=...) spelled out: the script root (a
    # mount behind a proxy) plus the route's own prefix. A job id is a UUID,
    # so nothing in it needs quoting or escaping.
    script_root = request.script_root
    response = None
    if app.extensions.get(ACCEPTED_TEMPLATE):
        response = flask_accepted.response(app, script_root, TASK_STATUS_PATH, kind, task_id)
    if response is None:  # Flask's own path (also for a JSON provider configured otherwise)
        status_url = f"{script_root}{TASK_STATUS_PATH}{task_id}"
        response = app.json.response(
            {"task_id": task_id, "kind": kind, "state": "PENDING", "status_url": status_url}
        )
        response.status_code = 202
        response.headers.add("Location", status_url)
    headers = response.headers
    headers.add("Retry-After", _FIRST_POLL)
    if replayed:
        headers.add("Idempotent-Replayed", "true")
    # The poll hint the rate limiter reads back (api/limits.suggest_poll_interval).
    flask_g.poll_interval = FIRST_POLL_SECONDS
    return response

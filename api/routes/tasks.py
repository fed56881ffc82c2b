"""Polling, listing and cancelling the caller's jobs.

A poll has its own budget (`@poll_limited`, RATELIMIT_POLL) and a running or
queued job's answer says when to poll again (Retry-After); a PENDING job's
answer carries its queue position and ETA, estimated in O(1) (shared/jobs/status).
"""

from __future__ import annotations

import json
import logging

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify

from api.admission import queue_depths
from api.errors import ApiError, not_found
from api.extensions import resources
from api.limits import poll_limited, suggest_poll_interval
from api.openapi import documented
from api.requests import parse_query
from api.responses import TaskPage, TaskStatus
from api.schemas import TaskListQuery
from api.security import current_identity, require_auth
from shared import jobs
from shared.jobs import fair
from shared.jobs import status as job_status
from tuning.redis_reads import LeanReads

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")
log = logging.getLogger(__name__)

# The status store polls read from: the app's own, over `LeanReads` (one HMGET
# without redis-py's per-command overhead; tuning/redis_reads.py).
POLL_STATUSES = "conveyor.poll_statuses"


def init_poll_reads(app: Flask) -> None:
    """Give `app` the status store its polls read through."""
    res = app.extensions["conveyor"]
    app.extensions[POLL_STATUSES] = job_status.StatusStore(LeanReads(res.redis), res.keys)


def _poll_statuses() -> job_status.StatusStore:
    extensions = current_app.extensions
    return extensions.get(POLL_STATUSES) or extensions["conveyor"].statuses


@bp.get("/<task_id>")
@poll_limited
@require_auth
@documented("A task's state, progress and result", auth="user", responses={200: TaskStatus})
def get_task(task_id: str) -> Response:
    owner_id = current_identity().user_id
    job_id = jobs.parse_job_id(task_id)
    if job_id is None:
        raise not_found()
    try:
        # Read fresh on every poll: the document a worker last wrote.
        live = _poll_statuses().read_document(str(job_id), owner_id)
    except redis.RedisError:
        live = None
    if live is not None and live.state in jobs.TERMINAL:
        # A terminal document never changes: send the stored JSON as it is,
        # without decoding and re-encoding it (the most frequent poll answer).
        return Response(live.document, mimetype="application/json")
    res = resources()
    status = job_status.current(
        res.statuses, res.sessions, job_id, owner_id, json.loads(live.document) if live else None
    )
    if status is None:
        raise not_found()
    estimate = None
    if status["state"] == "PENDING" and live is not None and live.ticket is not None:
        try:
            estimate = _estimate(res, owner_id, live)
        except redis.RedisError:
            estimate = None  # an estimate is a courtesy; the poll still answers
    status = job_status.with_estimate(status, estimate)
    response = jsonify(status)
    if status["state"] not in jobs.TERMINAL:
        suggest_poll_interval(response, job_status.suggested_poll_seconds(status))
    return response


def _estimate(res, owner_id: int, live: job_status.LiveDocument) -> job_status.Estimate:
    """A PENDING job's place: in the fair order while it waits in a line, else by its ticket."""
    if live.queue in fair.FAIR_QUEUES:
        document = json.loads(live.document)
        place = res.fair.position(live.queue, owner_id, document["task_id"])
        if place is not None:
            # Behind the jobs already on the broker, then its place among the lines.
            on_broker = queue_depths().inner.depth(live.queue)
            return res.statuses.estimate_at(live.queue, on_broker + place.ahead, place.reason)
    return res.statuses.estimate(live.queue, live.ticket)


@bp.get("")
@require_auth
@documented(
    "The caller's tasks, newest first", auth="user", query=TaskListQuery, responses={200: TaskPage}
)
def list_tasks() -> Response:
    query = parse_query(TaskListQuery)
    with resources().sessions() as session:
        items, total = jobs.list_jobs(
            session,
            current_identity().user_id,
            state=query.state,
            kind=query.kind,
            id_prefix=query.id_prefix,
            page=query.page,
            limit=query.limit,
        )
    items = [job_status.with_estimate(item, None) for item in items]
    return jsonify({"items": items, "page": query.page, "limit": query.limit, "total": total})


@bp.delete("/<task_id>")
@require_auth
@documented(
    "Cancel a task that has not finished",
    auth="user",
    responses={202: TaskStatus},
    errors=(409,),
)
def cancel_task(task_id: str) -> tuple[Response, int]:
    job_id = jobs.parse_job_id(task_id)
    if job_id is None:
        raise not_found()
    res = resources()
    owner_id = current_identity().user_id
    try:
        with res.sessions.begin() as session:
            status = jobs.cancel_job(session, job_id, owner_id)
    except jobs.JobNotFound:
        raise not_found() from None
    except jobs.JobAlreadyFinished as exc:
        raise ApiError(
            409,
            "already_finished",
            f"the task already finished ({exc.status['state']})",
            {"state": exc.status["state"]},
        ) from None
    job_status.publish(res.statuses, owner_id, status)
    _leave_line(res, owner_id, status)
    return jsonify(job_status.with_estimate(status, None)), 202


def _leave_line(res, owner_id: int, status: dict) -> None:
    """A cancelled job waiting in its fair line leaves it (else the worker skips it)."""
    queue = jobs.KIND_QUEUES.get(status.get("kind") or "")
    if queue not in fair.FAIR_QUEUES:
        return
    try:
        res.fair.remove(queue, owner_id, status["task_id"])
    except redis.RedisError:
        log.warning("cancelled job %s left in its fair line: Redis unavailable", status["task_id"])

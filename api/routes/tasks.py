"""Polling, listing and cancelling the caller's jobs."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from flask import Blueprint, Response, jsonify

from api.errors import ApiError, not_found
from api.extensions import resources
from api.openapi import documented
from api.requests import parse_query
from api.responses import TaskPage, TaskStatus
from api.schemas import TaskListQuery
from api.security import current_identity, require_auth
from shared import jobs

bp = Blueprint("tasks", __name__, url_prefix="/api/v1/tasks")
log = logging.getLogger(__name__)

# A live document that has not changed for this long is confirmed against the
# row, in case a worker's final Redis write was lost.
STALE_AFTER = timedelta(seconds=60)


@bp.get("/<task_id>")
@require_auth
@documented("A task's state, progress and result", auth="user", responses={200: TaskStatus})
def get_task(task_id: str) -> Response:
    owner_id = current_identity().user_id
    job_id = jobs.parse_job_id(task_id)
    if job_id is None:
        raise not_found()
    try:
        live = resources().statuses.read_document(str(job_id), owner_id)
    except redis.RedisError:
        live = None
    if live is not None and live.state in jobs.TERMINAL:
        # A terminal document never changes: send the stored JSON as it is,
        # without decoding and re-encoding it (the most frequent poll answer).
        return Response(live.document, mimetype="application/json")
    status = read_status(job_id, owner_id, json.loads(live.document) if live else None)
    if status is None:
        raise not_found()
    return jsonify(status)


def read_status(
    job_id: uuid.UUID, owner_id: int, live: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The live document `live` unless it went stale; else the row (cached for the next poll)."""
    res = resources()
    if live is not None and (live["state"] in jobs.TERMINAL or not _stale(live)):
        return live
    with res.sessions() as session:
        status = jobs.get_status(session, job_id, owner_id)
    if status is not None and live is None:
        try:  # cache the row for the next poll; never over a worker's write
            res.statuses.write(owner_id, status, only_if_missing=True)
        except redis.RedisError:
            log.debug("status snapshot not cached: Redis unavailable")
    return status


def _stale(status: dict[str, Any]) -> bool:
    updated = datetime.fromisoformat(status["updated_at"].replace("Z", "+00:00"))
    return datetime.now(UTC) - updated > STALE_AFTER


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
            page=query.page,
            limit=query.limit,
        )
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
    try:
        res.statuses.write(owner_id, status)
    except redis.RedisError:
        log.warning("cancelled status not cached: Redis unavailable")
    return jsonify(status), 202

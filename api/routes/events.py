"""Following jobs: stream tickets, and Server-Sent Events for one job or all of the caller's.

The stream itself (replay, live, the end) is shared/jobs/streams.py; on the
`events` process it stays open on the process's one reader (`EventHub`); on
`web` it is held open for a while on the job's own log (api/held_streams.py),
or replays and closes, and the client reconnects with its Last-Event-ID.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field

from api import tracing as api_tracing
from api.errors import ApiError, not_found
from api.extensions import resources
from api.held_streams import HeldStreams, held_streams
from api.limits import poll_limited
from api.openapi import PlainText, documented
from api.requests import parse_query
from api.security import current_identity, require_auth
from api.stream_auth import require_stream_auth, tickets
from shared import jobs
from shared.jobs import status as job_status
from shared.jobs.events import EventLog, StreamKeys, is_event_id
from shared.jobs.streams import HELD_RECONNECT_MS, RECONNECT_MS, JobStream, job_stream_ending

bp = Blueprint("events", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)

# Each event: `id` (resume after it), `event` (its type), `data` (a JSON document:
# the job's status, or the notification).
SSE = PlainText(
    "text/event-stream",
    schema=(
        ("type", "object"),
        (
            "properties",
            {
                "id": {"type": "string", "pattern": r"^\d+-\d+$"},
                "event": {"type": "string", "enum": ["state", "progress", "notification"]},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer"},
            },
        ),
    ),
)


class StreamQuery(BaseModel):
    last_event_id: str | None = Field(
        default=None, pattern=r"^\d{1,20}-\d{1,20}$", description="resume after this event id"
    )
    ticket: str | None = Field(
        default=None, max_length=2048, description="a stream ticket (POST /events/ticket)"
    )


class StreamTicket(BaseModel):
    ticket: str
    expires_in: int = Field(description="seconds")


@bp.post("/events/ticket")
@require_auth
@documented(
    "A short-lived ticket that only opens event streams (EventSource sends no headers)",
    auth="user",
    responses={200: StreamTicket},
)
def issue_ticket() -> Response:
    issuer = tickets()
    return jsonify({"ticket": issuer.issue(current_identity()), "expires_in": issuer.ttl_seconds})


@bp.get("/tasks/<task_id>/events")
@poll_limited
@documented(
    "The task's events (Server-Sent Events): replay since Last-Event-ID, then live; "
    "ends after the terminal event (204: nothing after Last-Event-ID, the task is finished)",
    auth="user",
    query=StreamQuery,
    responses={200: SSE, 204: SSE},
)
@require_stream_auth
def task_events(task_id: str) -> Response:
    after = last_event_id()
    owner_id = current_identity().user_id
    job_id = jobs.parse_job_id(task_id)
    if job_id is None:
        raise not_found()
    status = _current_status(resources(), str(job_id), owner_id)
    if status is None:
        raise not_found()
    stream = _stream(str(job_id), owner_id, after)
    replay = stream.open()
    nothing_new, ending = job_stream_ending(status, replay, after)
    if nothing_new:
        stream.close()
        return Response(status=204, mimetype="text/event-stream")
    return _response(stream, replay, ending)


@bp.get("/events")
@poll_limited
@documented(
    "The caller's job events and notifications (Server-Sent Events), resumable by Last-Event-ID",
    auth="user",
    query=StreamQuery,
    responses={200: SSE},
)
@require_stream_auth
def user_events() -> Response:
    stream = _stream(None, current_identity().user_id, last_event_id())
    return _response(stream, stream.open(), None)


def last_event_id() -> str | None:
    """Where to resume: the Last-Event-ID header (what EventSource sends), else the query."""
    query = parse_query(StreamQuery)
    header = request.headers.get("Last-Event-ID")
    if header is not None and not is_event_id(header):
        raise ApiError(
            422, "validation_error", "the request is invalid",
            [{"field": "Last-Event-ID", "message": "must be an event id such as 1700000000000-0"}],
        )  # fmt: skip
    return header or query.last_event_id


def _current_status(res: Any, job_id: str, owner_id: int) -> dict[str, Any] | None:
    """The job's status (live document, else the row); None when it is not the caller's."""
    try:
        live = res.statuses.read(job_id, owner_id)
    except redis.RedisError:
        live = None
    return job_status.current(res.statuses, res.sessions, jobs.parse_job_id(job_id), owner_id, live)


def _stream(job_id: str | None, owner_id: int, after: str | None) -> JobStream:
    res = resources()

    # Runs while the response streams, outside the request: it keeps `res`, not the
    # context. The row itself, not the live document: that is what may lack the end.
    def check_row() -> dict[str, Any] | None:
        if job_id is None:
            return None
        with res.sessions() as session:
            status = jobs.get_status(session, jobs.parse_job_id(job_id), owner_id)
        return status if status is not None and status["state"] in jobs.TERMINAL else None

    hub = current_app.extensions.get("conveyor.event_hub")
    # Without a hub (web): held open on the log itself while a slot is free.
    held = held_streams() if hub is None else None
    if held is None or not held.acquire():
        held = None
    return JobStream(
        log=EventLog(res.redis, StreamKeys(res.keys.prefix)),
        hub=hub,
        job_id=job_id,
        owner_id=owner_id,
        after=after,
        keepalive_seconds=res.settings.events_keepalive_seconds,
        check_row=check_row,
        row_check_seconds=res.settings.events_row_check_seconds,
        reconnect_ms=RECONNECT_MS if held is None else HELD_RECONNECT_MS,
        follow=None if held is None else held.log,
        hold_seconds=0.0 if held is None else held.hold_seconds,
        keep_holding=HeldStreams.keep_holding,
        on_close=None if held is None else held.release,
    )


def _response(stream: JobStream, replay: list[Any], ending: dict[str, Any] | None) -> Response:
    # Traced as long as it is open: Flask's own span ends when this view returns.
    frames = api_tracing.stream_span(
        stream.frames(replay, ending),
        "stream job events" if stream.job_id else "stream user events",
        {"conveyor.task_id": stream.job_id or "", "http.route": request.url_rule.rule},
    )
    response = Response(frames, mimetype="text/event-stream")
    # Proxies (nginx) must pass each event on at once, not buffer the stream.
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(stream.close)
    return response

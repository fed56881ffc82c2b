"""Following jobs: stream tickets, and Server-Sent Events for one job or all of the caller's.

A stream replays the log since `Last-Event-ID` (header, or `last_event_id`
query; from the start without one), then, on the `events` process, stays open
and pushes live events from the process's one reader (`EventHub`), with a
keep-alive comment when idle; a job's stream closes after its terminal event.
The web process serves the same routes as replay-and-close (no hub, no
long-held request thread): the client reconnects after `retry` with its
Last-Event-ID, so nothing is lost if a balancer sends a stream there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field

from api.errors import ApiError, not_found
from api.extensions import resources
from api.limits import poll_limited
from api.openapi import PlainText, documented
from api.requests import parse_query
from api.security import current_identity, require_auth
from api.stream_auth import require_stream_auth, tickets
from shared import jobs
from shared.jobs import status as job_status
from shared.jobs.events import (
    RESYNC,
    Event,
    EventHub,
    EventLog,
    StreamKeys,
    Subscription,
    is_event_id,
    newer,
)

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
# How long a client waits before reconnecting after a stream ends or breaks.
RECONNECT_MS = 2000


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
    res = resources()
    try:
        live = res.statuses.read(str(job_id), owner_id)
    except redis.RedisError:
        live = None
    status = job_status.current(res.statuses, res.sessions, job_id, owner_id, live)
    if status is None:
        raise not_found()
    stream = _Stream(job_id=str(job_id), owner_id=owner_id, after=after)
    replay = stream.open()
    finished = status["state"] in jobs.TERMINAL
    if finished and after is not None and not replay:
        stream.close()
        return Response(status=204, mimetype="text/event-stream")
    # The log may lack the end (expired, or written while Redis was down): the row decides.
    ending = status if finished and not any(_is_terminal(e) for e in replay) else None
    return stream.response(replay, ending)


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
    stream = _Stream(job_id=None, owner_id=current_identity().user_id, after=last_event_id())
    return stream.response(stream.open(), None)


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


def frame(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n"


def _is_terminal(event: Event) -> bool:
    return event.type == "state" and json.loads(event.data).get("state") in jobs.TERMINAL


class _Stream:
    """One client's stream: subscribed before the replay is read, so nothing falls between."""

    def __init__(self, *, job_id: str | None, owner_id: int, after: str | None) -> None:
        res = resources()
        self.job_id = job_id
        self.owner_id = owner_id
        self.after = after
        self.log = EventLog(res.redis, StreamKeys(res.keys.prefix))
        self.hub: EventHub | None = current_app.extensions.get("conveyor.event_hub")
        self.keepalive = res.settings.events_keepalive_seconds
        self.check_row: Callable[[], dict[str, Any] | None] = _row_check(res, job_id, owner_id)
        self.sub: Subscription | None = None

    def open(self) -> list[Event]:
        """Subscribe (on the events process), then read the log since `after`."""
        if self.hub is not None:
            self.sub = self.hub.subscribe(job_id=self.job_id, owner_id=None
                                          if self.job_id else self.owner_id)  # fmt: skip
        try:
            return self._replay()
        except BaseException:
            self.close()
            raise

    def _replay(self) -> list[Event]:
        if self.job_id is not None:
            return self.log.job_events(self.job_id, self.after)
        return self.log.user_events(self.owner_id, self.after)

    def close(self) -> None:
        if self.sub is not None and self.hub is not None:
            self.hub.unsubscribe(self.sub)
            self.sub = None

    def response(self, replay: list[Event], ending: dict[str, Any] | None) -> Response:
        response = Response(self._frames(replay, ending), mimetype="text/event-stream")
        # Proxies (nginx) must pass each event on at once, not buffer the stream.
        response.headers["X-Accel-Buffering"] = "no"
        response.call_on_close(self.close)
        return response

    def _frames(self, replay: list[Event], ending: dict[str, Any] | None) -> Iterator[str]:
        yield f"retry: {RECONNECT_MS}\n\n"
        if (yield from self._send(replay)):
            return
        if ending is not None:
            # No id: the log has no such event, so there is nothing to resume after.
            yield f"event: state\ndata: {json.dumps(ending, separators=(',', ':'))}\n\n"
            return
        if self.sub is None:
            return  # web: replay and close; the client reconnects with its Last-Event-ID
        yield from self._live(self.sub)

    def _send(self, events: list[Event]) -> Iterator[str]:
        """Frames for `events` newer than the last one sent; returns True after a job's end."""
        for event in newer(events, self.after):
            yield frame(event)
            self.after = event.id
            if self.job_id is not None and _is_terminal(event):
                return True
        return False

    def _live(self, sub: Subscription) -> Iterator[str]:
        quiet_since = time.monotonic()
        behind = False  # Redis came back but our re-read failed: try again at the next tick
        while True:
            item = sub.get(self.keepalive)
            if item is None:
                yield ": keep-alive\n\n"
                ending = None
                if time.monotonic() - quiet_since > job_status.STALE_AFTER.total_seconds():
                    # At most once a minute per quiet stream: it may read the row.
                    ending, quiet_since = self.check_row(), time.monotonic()
                if ending is not None:
                    yield f"event: state\ndata: {json.dumps(ending, separators=(',', ':'))}\n\n"
                    return
                if not behind:
                    continue
            events: list[Event] = []
            if item == RESYNC or behind:
                try:
                    events, behind = self._replay(), False
                except redis.RedisError:
                    behind = True
            elif isinstance(item, Event):
                events = [item]
            if events:
                quiet_since = time.monotonic()
            if (yield from self._send(events)):
                return


def _row_check(res: Any, job_id: str | None, owner_id: int) -> Callable[[], dict[str, Any] | None]:
    """For a quiet job stream: the job's status if the row says it ended (its event was lost)."""

    def check() -> dict[str, Any] | None:
        if job_id is None:
            return None
        try:
            live = res.statuses.read(job_id, owner_id)
        except redis.RedisError:
            live = None
        status = job_status.current(
            res.statuses, res.sessions, jobs.parse_job_id(job_id), owner_id, live
        )
        return status if status is not None and status["state"] in jobs.TERMINAL else None

    return check

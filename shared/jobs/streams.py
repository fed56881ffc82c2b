"""One client's event stream, as Server-Sent Events: replay since an id, then live, then the end.

A stream subscribes to its process's `EventHub` before it reads the log, so
no event falls between the replay and the live part; it sends only events
newer than the last one sent (a replay after a resync repeats nothing), and
a job's stream ends after the job's terminal event. What the log may lack,
the row decides: a job that ended while its event was lost (written while
Redis was down, or expired) gets a closing `state` frame from the row, and a
quiet stream asks the row at most once per `row_check_seconds` (EVENTS_ROW_CHECK_SECONDS).

Without a hub a stream either waits on its own log for a bounded time
(`follow`, `hold_seconds`: web's streams, a blocking read of the job's or
user's log, closed after the hold or the job's end) or replays and closes;
either way the client reconnects after `retry` with its Last-Event-ID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from shared.jobs.events import RESYNC, Event, EventHub, EventLog, Subscription, newer
from shared.jobs.model import TERMINAL
from shared.jobs.status import STALE_AFTER

# How long a client waits before reconnecting after a stream ends or breaks.
RECONNECT_MS = 2000
# The same after a held stream's hold ran out: it lasted seconds, so a prompt
# reconnect costs little, and events meanwhile wait no longer than this.
HELD_RECONNECT_MS = 250
# A held stream's longest single wait on its log (an XREAD BLOCK a second
# while idle): how soon it notices its process stopping.
HELD_WAIT_SECONDS = 1.0

# The job's status if its row says it ended (its event was lost), else None.
RowCheck = Callable[[], dict[str, Any] | None]


def frame(event: Event) -> str:
    """One event as an SSE frame."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n"


def ending_frame(status: dict[str, Any]) -> str:
    """A job's end read from its row: no id, since the log has no such event to resume after."""
    return f"event: state\ndata: {json.dumps(status, separators=(',', ':'))}\n\n"


def is_terminal(event: Event) -> bool:
    """Whether `event` is a job's terminal state."""
    return event.type == "state" and json.loads(event.data).get("state") in TERMINAL


class JobStream:
    """A job's stream (`job_id`) or a user's (`job_id=None`), resumed after `after`."""

    def __init__(
        self,
        *,
        log: EventLog,
        hub: EventHub | None,
        job_id: str | None,
        owner_id: int,
        after: str | None,
        keepalive_seconds: float,
        check_row: RowCheck,
        reconnect_ms: int = RECONNECT_MS,
        row_check_seconds: float = STALE_AFTER.total_seconds(),
        follow: EventLog | None = None,
        hold_seconds: float = 0.0,
        keep_holding: Callable[[], bool] = lambda: True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.hub = hub
        self.job_id = job_id
        self.owner_id = owner_id
        self.after = after
        self.keepalive = keepalive_seconds
        self.check_row = check_row
        self.reconnect_ms = reconnect_ms
        self.row_check_seconds = row_check_seconds
        self.follow = follow
        self.hold_seconds = hold_seconds
        self.keep_holding = keep_holding
        self.on_close = on_close
        self.sub: Subscription | None = None

    def open(self) -> list[Event]:
        """Subscribe (when there is a hub), then read the log since `after`."""
        if self.hub is not None:
            owner = None if self.job_id else self.owner_id
            self.sub = self.hub.subscribe(job_id=self.job_id, owner_id=owner)
        try:
            return self._replay()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unsubscribe from the hub, and call `on_close` once (idempotent)."""
        if self.sub is not None and self.hub is not None:
            self.hub.unsubscribe(self.sub)
            self.sub = None
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def frames(self, replay: list[Event], ending: dict[str, Any] | None) -> Iterator[str]:
        """The stream's text: `retry`, the replay, then `ending` or the live events."""
        yield f"retry: {self.reconnect_ms}\n\n"
        if (yield from self._send(replay)):
            return
        if ending is not None:
            yield ending_frame(ending)
            return
        if self.sub is not None:
            yield from self._live(self.sub)
        elif self.follow is not None and self.hold_seconds > 0:
            yield from self._held(self.follow)
        # Else replay and close; the client reconnects with its Last-Event-ID.

    def _replay(self) -> list[Event]:
        if self.job_id is not None:
            return self.log.job_events(self.job_id, self.after)
        return self.log.user_events(self.owner_id, self.after)

    def _send(self, events: list[Event]) -> Iterator[str]:
        """Frames for `events` newer than the last one sent; returns True after a job's end.

        A terminal event that later events follow is not the end: the job was
        replayed after it (shared/jobs/replay.py), and the replay goes on.
        """
        fresh = newer(events, self.after)
        for index, event in enumerate(fresh):
            yield frame(event)
            self.after = event.id
            if self.job_id is not None and is_terminal(event) and index == len(fresh) - 1:
                return True
        return False

    def _held(self, follow: EventLog) -> Iterator[str]:
        """Live events read from the log itself, until the job ends or the hold is over.

        Each wait is one XREAD BLOCK after the last id sent, so nothing written
        meanwhile is missed; waits are short (HELD_WAIT_SECONDS) so a stopping
        process (`keep_holding` turns false) lets its streams go at once. The
        row is not asked here but when the client reconnects (the hold, 20 s,
        is well under `row_check_seconds`). Redis going away ends the stream;
        the client resumes after its Last-Event-ID.
        """
        deadline = time.monotonic() + self.hold_seconds
        quiet_since = time.monotonic()
        while (remaining := deadline - time.monotonic()) > 0 and self.keep_holding():
            wait_ms = int(min(remaining, HELD_WAIT_SECONDS) * 1000)
            try:
                if self.job_id is not None:
                    events = follow.wait_job_events(self.job_id, self.after, wait_ms)
                else:
                    events = follow.wait_user_events(self.owner_id, self.after, wait_ms)
            except redis.RedisError:
                return
            if events:
                quiet_since = time.monotonic()
                if (yield from self._send(events)):
                    return
            elif time.monotonic() - quiet_since >= self.keepalive:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"

    def _live(self, sub: Subscription) -> Iterator[str]:
        quiet_since = time.monotonic()
        behind = False  # Redis came back but our re-read failed: try again at the next tick
        while True:
            item = sub.get(self.keepalive)
            if item is None:
                yield ": keep-alive\n\n"
                ending = None
                if time.monotonic() - quiet_since > self.row_check_seconds:
                    # At most once per row_check_seconds per quiet stream: it may read the row.
                    ending, quiet_since = self.check_row(), time.monotonic()
                if ending is not None:
                    yield ending_frame(ending)
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


def job_stream_ending(
    status: dict[str, Any], replay: list[Event], after: str | None
) -> tuple[bool, dict[str, Any] | None]:
    """For a job's stream: (nothing to send at all, the row's ending to close with).

    A finished job with nothing after `after` has nothing to send (the API
    answers 204); a finished job whose log lacks its end closes with the row's.
    """
    finished = status["state"] in TERMINAL
    if finished and after is not None and not replay:
        return True, None
    if finished and not any(is_terminal(event) for event in replay):
        return False, status
    return False, None

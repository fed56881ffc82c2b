"""Event streams `web` holds open itself: a bounded wait on the job's own log, a bounded number.

Without this a stream that reached `web` (no events process, or no balancer
rule sending stream paths to it) replayed and closed, and the client came
back after `retry` (2 s): every live view lagged by up to that. Here a
stream waits on its job's (or user's) own Redis Stream with XREAD BLOCK
after its last sent id, so an event reaches the client as soon as a worker
writes it, for up to WEB_STREAM_HOLD_SECONDS; then it closes and the client
reconnects at once (`retry: 250`) with its Last-Event-ID.

Only in gevent workers (the Procfile's `web`): a held stream is a greenlet
there, and its body is sent after the view returned, so it holds no slot of
the request gate (infra/wsgi_gate.py); in a gthread worker it would hold one
of a handful of threads, so streams replay and close there as before. Each
held stream's waits use a connection of a pool of their own, sized
WEB_STREAMS_HELD_MAX per worker, never the one polls read from; past that
many at once a stream replays and closes (the `events` process holds any
number, one Redis reader for all: route stream paths to it at scale).

A worker told to stop (SIGTERM: a deploy, Ctrl-C under `make run`) lets its
held streams go within a second (`end_on_sigterm`, from gunicorn.conf.py)
instead of keeping its graceful stop waiting for them; their clients
reconnect elsewhere after `retry`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import redis
from flask import Flask, current_app

from infra import gevent_support
from infra.settings import Settings
from shared.jobs.events import EventLog, StreamKeys
from shared.jobs.streams import HELD_WAIT_SECONDS

_EXTENSION = "conveyor.held_streams"
# Slack on the socket timeout past the longest wait on a log.
_SOCKET_SLACK_SECONDS = 5
# Set once this process has been told to stop: held streams end at their next wait.
_STOPPING = threading.Event()


class HeldStreams:
    """At most `limit` streams of this process held open at once, each for `hold_seconds`."""

    def __init__(self, log: EventLog, *, limit: int, hold_seconds: float) -> None:
        self.log = log
        self.limit = limit
        self.hold_seconds = hold_seconds
        self.held = 0

    def acquire(self) -> bool:
        """Take a slot for one more held stream; False when all are taken (replay and close)."""
        # No lock: greenlets of one gevent worker switch only on I/O, never here.
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1

    @staticmethod
    def keep_holding() -> bool:
        """False once the process is stopping: its held streams end (their clients resume)."""
        return not _STOPPING.is_set()


def end_on_sigterm() -> None:
    """On SIGTERM, end this process's held streams, then run the handler it had (gunicorn's).

    gunicorn's gevent worker stops gracefully on SIGTERM: it stops accepting
    and waits (up to graceful_timeout) for requests in progress, a held stream
    among them. The previous handler is called as it was; only a flag is added.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def stopping(signum: int, frame: FrameType | None) -> None:
        _STOPPING.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, stopping)
    # As gunicorn sets it for its own handler: requests' system calls go on.
    signal.siginterrupt(signal.SIGTERM, False)


def init_held_streams(app: Flask, settings: Settings) -> None:
    """Let `app` hold streams open when it runs in a gevent worker and holding is on."""
    limit, hold = settings.web_streams_held_max, settings.web_stream_hold_seconds
    if limit < 1 or hold <= 0 or not gevent_support.is_patched():
        return
    wait_seconds = min(hold, HELD_WAIT_SECONDS)
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            # One connection per held stream at most; `acquire` keeps them to this.
            max_connections=limit,
            timeout=5,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=wait_seconds + _SOCKET_SLACK_SECONDS,
            health_check_interval=30,
        )
    )
    log = EventLog(client, StreamKeys(settings.redis_key_prefix))
    app.extensions[_EXTENSION] = HeldStreams(log, limit=limit, hold_seconds=hold)


def held_streams() -> HeldStreams | None:
    """This app's held streams, or None when its streams replay and close."""
    return current_app.extensions.get(_EXTENSION)

"""HMGET for the poll path without redis-py's per-command machinery (a client stand-in).

redis-py 8 spends more CPU around a command than on it. Per command its pool
checks the pid twice (a system call each), polls the socket for stray data
(another), takes and releases a lock twice, dispatches a release event and
records OpenTelemetry counters (looked up even when telemetry is off); the
client wraps the call in a retry closure. In `make bench`'s poll profile the
one HMGET was a third of the request; in one process against a local Redis it
is ~53 µs through the client and ~27 µs on a connection of our own.

`LeanReads` keeps its own few connections (made by the client pool's own
connection class and settings: URL, TLS, timeouts, health checks, decoding),
sends HMGET and reads the reply, and hands everything else to the real
client. A connection goes back to the idle list only after a complete reply,
so it can never hold stray data. On a connection or timeout error the call
is made again through the real client, whose retry policy decides and whose
error (Redis down) the caller already handles.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import redis

# Connections one process keeps for these reads. The gevent web runs at most
# 64 requests in the app per worker (gunicorn.conf.py); past this many at once
# a read takes the client's pool instead.
MAX_CONNECTIONS = 64

_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


class LeanReads:
    """A `redis.Redis` for readers: `hmget` on connections of its own, the rest delegated."""

    def __init__(self, client: redis.Redis, max_connections: int = MAX_CONNECTIONS) -> None:
        pool = client.connection_pool
        self._client = client
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._max_connections = max_connections
        # list.append/pop are atomic: safe for greenlets and threads alike.
        self._idle: list[Any] = []
        self._opened: list[None] = []
        # A forked child must not share the parent's sockets.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(ref))

    def hmget(self, name: str, keys: Any, *args: Any) -> list[Any]:
        """HMGET `name` for `keys` (a list, or the first of several field arguments)."""
        fields = [*keys, *args] if isinstance(keys, list | tuple) else [keys, *args]
        connection = self._checkout()
        if connection is None:
            return self._client.hmget(name, fields)
        try:
            connection.send_command("HMGET", name, *fields)
            reply = connection.read_response()
        except BaseException as exc:
            self._discard(connection)
            if isinstance(exc, _TRANSIENT):
                return self._client.hmget(name, fields)
            raise
        self._idle.append(connection)
        return reply

    def connections(self) -> int:
        """Connections of its own open right now (idle or in use)."""
        return len(self._opened)

    def close(self) -> None:
        """Close every idle connection (those in use are closed when they come back)."""
        while self._idle:
            self._discard(self._idle.pop())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _checkout(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if len(self._opened) >= self._max_connections:
            return None
        self._opened.append(None)
        return self._connection_class(**self._connection_kwargs)

    def _discard(self, connection: Any) -> None:
        try:
            connection.disconnect()
        finally:
            with contextlib.suppress(IndexError):
                self._opened.pop()

    def _after_fork(self) -> None:
        self._idle = []
        self._opened = []


def _forget_after_fork(ref: weakref.ref[LeanReads]) -> None:
    reads = ref()
    if reads is not None:
        reads._after_fork()

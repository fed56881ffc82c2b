"""A few Redis connections of a caller's own, made like its client's, for its hot round trips.

redis-py 8 spends more CPU around a command than on it: per command its pool
checks the pid twice, checks the socket for stray data, takes and releases a
lock twice, dispatches a release event and records OpenTelemetry counters.
The poll's HMGET (api/lean_redis.py) and the submit flush's pipeline
(shared/lean_pipeline.py) send on connections kept here instead.

Connections are made by the client pool's own connection class and settings
(URL, TLS, timeouts, health checks, decoding), at most `max_connections` at a
time; past that `checkout` answers None and the caller takes the client. A
caller gives a connection back only after reading every answer it asked for,
so an idle connection never holds stray data, and discards it on any error.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import redis

# Errors after which a caller reruns its command through the real client,
# whose retry policy then decides.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


class OwnConnections:
    """Up to `max_connections` connections to `client`'s Redis, outside its pool."""

    def __init__(self, client: redis.Redis, max_connections: int) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._max_connections = max_connections
        # list.append/pop are atomic: safe for greenlets and threads alike.
        self._idle: list[Any] = []
        self._opened: list[None] = []
        # A forked child must not share the parent's sockets.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(ref))

    def checkout(self) -> Any:
        """An idle connection, a new one, or None when all of them are in use."""
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if len(self._opened) >= self._max_connections:
            return None
        self._opened.append(None)
        return self._connection_class(**self._connection_kwargs)

    def give_back(self, connection: Any) -> None:
        """Return a connection whose every answer was read."""
        self._idle.append(connection)

    def discard(self, connection: Any) -> None:
        """Close a connection that failed (or may hold unread answers)."""
        try:
            connection.disconnect()
        finally:
            with contextlib.suppress(IndexError):
                self._opened.pop()

    def count(self) -> int:
        """Connections open right now (idle or in use)."""
        return len(self._opened)

    def close(self) -> None:
        """Close every idle connection (those in use are closed when they come back)."""
        while self._idle:
            self.discard(self._idle.pop())

    def _after_fork(self) -> None:
        self._idle = []
        self._opened = []


def _forget_after_fork(ref: weakref.ref[OwnConnections]) -> None:
    connections = ref()
    if connections is not None:
        connections._after_fork()

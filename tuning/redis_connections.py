"""A few Redis connections of a caller's own, outside redis-py's pool, for the hottest round trips.

Changes: the poll's HMGET (tuning/redis_reads.py) and the submit flush's
pipeline (tuning/redis_pipelines.py) send on connections made here by the
client pool's own connection class and settings (URL, TLS, timeouts, health
checks, decoding; one connect attempt, not the client's retries), at most
`max_connections` at a time; past that `checkout` answers None and the
caller takes the client. A connection goes back only after every answer it
asked for was read, so an idle one never holds stray data; on any error it
is discarded.

Why: per command redis-py 8's pool checks the pid twice, polls the socket
for stray data, takes and releases a lock twice, dispatches a release event
and records OpenTelemetry counters: more CPU than the command itself (an
HMGET ~53 µs through the client, ~27 µs here; docs/benchmarks.md, "poll").

Behind Sentinel the pool's class is redis-py's `SentinelManagedConnection`
and its kwargs carry the pool's proxy: a new connection asks the sentinels
where the master is when it connects, and one to a master that died or was
demoted fails, is discarded, and its call reruns through the client, which
reconnects the same way (infra/redis_store.py).

Written against: redis 8.1.0 (`connection_pool.connection_class` and
`connection_kwargs`, `Connection.connect`/`send_command`/`send_packed_command`/
`read_response`, `SentinelConnectionPool`), hiredis 3.5.0 (`pack_command`).
Breaks: tests/tuning/test_redis_reads.py, tests/tuning/test_redis_pipelines.py,
tests/integration/test_sentinel.py (own connections behind Sentinel, across a failover).
Off: `CONVEYOR_TUNING=-redis_own_connections` (or `off`): polls and flushes
take the client's pool (and without `fast_publish`, the flush is Celery's).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Errors after which a caller reruns its command through the real client,
# whose retry policy then decides.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


class OwnConnections:
    """Up to `max_connections` connections to `client`'s Redis, outside its pool."""

    def __init__(self, client: redis.Redis, max_connections: int) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        # One attempt each: on a failure the caller reruns through the client,
        # whose retry policy then decides (retrying here too doubled the wait).
        self._connection_kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        self._max_connections = max_connections
        # list.append/pop are atomic: safe for greenlets and threads alike.
        self._idle: list[Any] = []
        self._opened: list[None] = []
        # A forked child must not share the parent's sockets.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(ref))

    def checkout(self) -> Any:
        """An idle connection, a new one, or None: all are in use, or a new one cannot connect."""
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if len(self._opened) >= self._max_connections:
            return None
        self._opened.append(None)
        connection = self._connection_class(**self._connection_kwargs)
        try:
            # Its class's own connect, as redis-py's pool calls it before lending one:
            # a Sentinel-managed connection asks for the master's address here. (Sent
            # on unconnected, it would dial the default localhost:6379 instead.)
            connection.connect()
        except TRANSIENT:
            self.discard(connection)
            return None
        return connection

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

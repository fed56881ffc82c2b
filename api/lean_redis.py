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

from typing import Any

import redis

from shared.redis_connections import TRANSIENT, OwnConnections

# Connections one process keeps for these reads. The gevent web runs at most
# 64 requests in the app per worker (gunicorn.conf.py); past this many at once
# a read takes the client's pool instead.
MAX_CONNECTIONS = 64


class LeanReads:
    """A `redis.Redis` for readers: `hmget` on connections of its own, the rest delegated."""

    def __init__(self, client: redis.Redis, max_connections: int = MAX_CONNECTIONS) -> None:
        self._client = client
        self._connections = OwnConnections(client, max_connections)

    def hmget(self, name: str, keys: Any, *args: Any) -> list[Any]:
        """HMGET `name` for `keys` (a list, or the first of several field arguments)."""
        fields = [*keys, *args] if isinstance(keys, list | tuple) else [keys, *args]
        connection = self._connections.checkout()
        if connection is None:
            return self._client.hmget(name, fields)
        try:
            connection.send_command("HMGET", name, *fields)
            reply = connection.read_response()
        except BaseException as exc:
            self._connections.discard(connection)
            if isinstance(exc, TRANSIENT):
                return self._client.hmget(name, fields)
            raise
        self._connections.give_back(connection)
        return reply

    def connections(self) -> int:
        """Connections of its own open right now (idle or in use)."""
        return self._connections.count()

    def close(self) -> None:
        """Close every idle connection (those in use are closed when they come back)."""
        self._connections.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

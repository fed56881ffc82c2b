"""HMGET for the poll path on connections of its own (tuning/redis_connections.py).

`LeanReads` sends HMGET itself and hands every other command to the real
client. On a connection or timeout error the call is made again through the
real client, whose retry policy decides and whose error (Redis down) the
caller already handles. See tuning/redis_connections.py for what, why, the
versions and the switch (`redis_own_connections`).
"""

from __future__ import annotations

from typing import Any

import redis

from tuning.redis_connections import TRANSIENT, OwnConnections

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

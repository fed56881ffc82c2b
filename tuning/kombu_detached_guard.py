"""Repair: a Celery worker survives Redis dying while it holds messages.

Changes: `kombu.transport.redis.Channel._connparams` raises redis's
ConnectionError, not AttributeError, once the channel's transport is detached.

Why: kombu 5.7.0 (the same path as celery/kombu#582) can kill a worker that
loses Redis while it holds ETA or countdown messages with `Unrecoverable
error: AttributeError("'NoneType' object has no attribute 'hostname'")`:
1. Redis dies while the task channel has a BRPOP in flight, and the loss is
   first seen on another socket (the pidbox LISTEN connection).
2. Celery's `Consumer.on_connection_error_after_connected` calls
   `Connection.collect()`; closing the task channel tries to drain the BRPOP,
   which raises before the channel is marked closed, and the transport is
   then detached (`transport.client = None`).
3. Celery's `connection.close()` closes that channel again; its restore of
   unacked messages asks for a new pool, and `_connparams` reads
   `self.connection.client.hostname` on the detached transport. The
   AttributeError is neither a connection nor a channel error, so it
   escapes `ignore_errors` and the consumer.
With the guard every late caller sees what it already handles, a broker it
cannot reach; the held messages stay in kombu's `unacked` hash and return to
their queue when their lease expires (tuning/broker_leases.py).

Written against: kombu 5.7.0 (`tuning.ADJUSTMENTS`).
Breaks: tests/ops/test_worker_survives_redis_loss.py (remove the guard when a
kombu release no longer dies there without it); tests/tuning/test_kombu_detached_guard.py.
Off: `CONVEYOR_TUNING=-kombu_detached_guard` (a repair: `off` keeps it).
"""

from __future__ import annotations

from typing import Any

_ORIGINAL = "_conveyor_original"


def install() -> bool:
    """Guard kombu's Redis channels (once; again is a no-op)."""
    from kombu.transport import redis as kombu_redis

    channel_class = kombu_redis.Channel
    current = channel_class._connparams
    if getattr(current, _ORIGINAL, None) is not None:
        return True
    from redis.exceptions import ConnectionError as RedisConnectionError

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if getattr(self.connection, "client", None) is None:
            # collect()/close() detached this channel's transport: there is
            # nothing left to connect with, as when the broker is down.
            raise RedisConnectionError("kombu transport already closed; channel cannot reconnect")
        return current(self, asynchronous=asynchronous)

    setattr(_connparams, _ORIGINAL, current)
    channel_class._connparams = _connparams
    return True


def uninstall() -> None:
    """kombu's own `_connparams` again (tests)."""
    from kombu.transport import redis as kombu_redis

    original = getattr(kombu_redis.Channel._connparams, _ORIGINAL, None)
    if original is not None:
        kombu_redis.Channel._connparams = original

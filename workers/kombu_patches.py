"""kombu's Redis transport, adjusted: a guard, one client object per channel, and batched acks.

## The guard: a worker must survive Redis dying while it holds messages

The bug (kombu 5.7.0, the newest release; the same path as celery/kombu#582):
when Redis dies, a worker sometimes exits with `Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")`. Path:

1. Redis dies while the task channel has a BRPOP in flight (it holds ETA or
   countdown messages unacked, so its prefetch is not full) and the loss is
   first seen on another socket (the pidbox/events LISTEN connection).
2. Celery's `Consumer.on_connection_error_after_connected` calls
   `Connection.collect()`. Its close of the task channel tries to drain the
   in-flight BRPOP (`redis.Channel.close` -> `_brpop_read`), which raises
   ConnectionError before the channel is marked closed; `maybe_close_channel`
   swallows it and leaves the channel half-closed with its unacked messages.
   `Transport.close_connection` stops at the next channel whose close fails
   (a fanout `queue_delete`), and `_do_close_transport` then sets
   `transport.client = None`.
3. Celery then calls `connection.close()`, which closes that task channel
   again: its pools are dropped, `virtual.Channel.close` runs
   `QoS.restore_unacked_once()`, the restore asks for a new pool, and
   `redis.Channel._connparams` reads `self.connection.client.hostname` on the
   detached transport. The AttributeError is neither a connection nor a
   channel error, so it escapes `ignore_errors` and the worker's consumer.

The guard: `_connparams` on a detached transport raises redis's
ConnectionError (one of the transport's `connection_errors`), so every late
caller (that second close, a `Finalize` restore at exit) sees what it
already handles, a broker it cannot reach. The restore then fails exactly as
it does on the ordinary path with Redis down: the messages stay in kombu's
`unacked` hash and return to their queue when their lease expires
(workers/broker_leases.py), after which each job runs once.

Remove the guard when a kombu release no longer dies in
tests/test_worker_survives_redis_loss.py without it.

## One client per channel

kombu's Redis channel builds a new redis-py client object for every
operation outside the BRPOP loop: each message's unacked record, each ack,
each publish (`Channel.conn_or_acquire`). The client shares the channel's
connection pool, so the object is all it costs, but redis-py's constructor
is not cheap (it builds its response-callback table): in a prefork worker's
main process draining ledger jobs it was a fifth of the CPU (py-spy).
`reuse_sync_clients` keeps one such client per channel and pool; a client
is safe to share (each command takes a connection from the pool), and a
channel that replaces its pool gets a new one.

## Many acks, one round trip

kombu acks a Redis message with one pipelined round trip each (the message
leaves the `unacked` hash and its index). `ack_many` does the same for a list
of messages in one pipeline, then the same per-message bookkeeping kombu's
own ack does; the ledger worker acks a whole batch with it
(workers/ledger_batches.py). Anything that is not a Redis message is acked
the ordinary way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual
from redis.exceptions import ConnectionError as RedisConnectionError

_PATCHED_FLAG = "_conveyor_detached_transport_guard"


def guard_detached_transport() -> None:
    """Make kombu Redis channels on a closed transport raise ConnectionError, not AttributeError."""
    channel_class = kombu_redis.Channel
    if getattr(channel_class, _PATCHED_FLAG, False):
        return
    original = channel_class._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if getattr(self.connection, "client", None) is None:
            # Connection.collect()/close() detached this channel's transport:
            # there is nothing left to connect with, as when the broker is down.
            raise RedisConnectionError("kombu transport already closed; channel cannot reconnect")
        return original(self, asynchronous=asynchronous)

    channel_class._connparams = _connparams
    setattr(channel_class, _PATCHED_FLAG, True)


_REUSE_FLAG = "_conveyor_reuses_sync_clients"


def reuse_sync_clients() -> None:
    """Make kombu Redis channels reuse one synchronous client per connection pool."""
    channel_class = kombu_redis.Channel
    if getattr(channel_class, _REUSE_FLAG, False):
        return

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get("_conveyor_sync_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, self._create_client())
            self.__dict__["_conveyor_sync_client"] = cached
        yield cached[1]

    channel_class.conn_or_acquire = conn_or_acquire
    setattr(channel_class, _REUSE_FLAG, True)


def ack_many(messages: list[Any], logger: Any, connection_errors: tuple[type, ...]) -> None:
    """Acknowledge `messages` (kombu Messages), those of one Redis channel in one round trip.

    Errors are logged, as `Message.ack_log_error` does: an unacknowledged
    message is delivered again later, and a job that already ran is skipped.
    """
    by_channel: dict[int, list[Any]] = {}
    for message in messages:
        by_channel.setdefault(id(message.channel), []).append(message)
    for group in by_channel.values():
        channel = group[0].channel
        qos = getattr(channel, "qos", None)
        if len(group) == 1 or not isinstance(qos, kombu_redis.QoS):
            for message in group:
                message.ack_log_error(logger, connection_errors)
            continue
        try:
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for message in group:
                    qos._remove_from_indices(message.delivery_tag, pipe)
                pipe.execute()
        except connection_errors as exc:
            logger.critical("Couldn't ack %d messages: %r", len(group), exc, exc_info=True)
            continue
        for message in group:
            # What kombu's Redis ack does after its round trip.
            kombu_virtual.QoS.ack(qos, message.delivery_tag)
            message._state = "ACK"

"""kombu's Redis channel: one redis-py client per channel, and a batch's acks in one round trip.

Changes: `kombu.transport.redis.Channel.conn_or_acquire` hands out one
cached client per channel and pool (`install`); `ack_many` acks many
messages of one channel with one pipeline, reading QoS's
`_remove_from_indices` and setting `Message._state` as kombu's own ack does.

Why: kombu builds a new redis-py client object for every operation outside
the BRPOP loop (each unacked record, each ack, each publish); the client
shares the channel's pool, but its constructor builds a response-callback
table, a fifth of a prefork worker's main-process CPU when draining ledger
jobs (docs/benchmarks.md, "prefork drain"). A client is safe to share (each
command takes a connection from the pool); a channel that replaces its pool
gets a new one. Acks: kombu's is one pipelined trip per message; the ledger
batches (tuning/celery_ledger_batches.py) ack a whole batch at once.

Written against: kombu 5.7.0, redis 8.1.0.
Breaks: tests/integration/test_kombu_channel_clients.py.
Off: `CONVEYOR_TUNING=-kombu_client_reuse` (client reuse) or
`-ledger_batches` (the only caller of `ack_many`); `off` turns off both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ORIGINAL = "_conveyor_original"
_CACHED = "_conveyor_sync_client"


def install() -> bool:
    """Make kombu Redis channels reuse one synchronous client per connection pool (once)."""
    from kombu.transport import redis as kombu_redis

    channel_class = kombu_redis.Channel
    current = channel_class.conn_or_acquire
    if getattr(current, _ORIGINAL, None) is not None:
        return True

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get(_CACHED)
        if cached is None or cached[0] is not pool:
            cached = (pool, self._create_client())
            self.__dict__[_CACHED] = cached
        yield cached[1]

    setattr(conn_or_acquire, _ORIGINAL, current)
    channel_class.conn_or_acquire = conn_or_acquire
    return True


def uninstall() -> None:
    """kombu's own `conn_or_acquire` again (tests)."""
    from kombu.transport import redis as kombu_redis

    original = getattr(kombu_redis.Channel.conn_or_acquire, _ORIGINAL, None)
    if original is not None:
        kombu_redis.Channel.conn_or_acquire = original


def ack_many(messages: list[Any], logger: Any, connection_errors: tuple[type, ...]) -> None:
    """Acknowledge `messages` (kombu Messages), those of one Redis channel in one round trip.

    Errors are logged, as `Message.ack_log_error` does: an unacknowledged
    message is delivered again later, and a job that already ran is skipped.
    """
    from kombu.transport import redis as kombu_redis
    from kombu.transport.virtual import base as kombu_virtual

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

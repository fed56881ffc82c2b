"""How many messages wait in a broker queue, read from the real broker (Redis or RabbitMQ).

Admission control asks on every submission, `/metrics` at every scrape and
the re-dispatch sweep once a minute. Each broker answers differently (LLEN of
kombu's list on Redis, a passive queue.declare on RabbitMQ); callers see one
interface, `QueueDepths`, built by `create_queue_depths` from the broker URL.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import redis
from kombu import Connection
from kombu.exceptions import OperationalError

from infra.broker import keys
from infra.broker.config import is_amqp_url
from infra.redis_store import create_redis
from infra.settings import Settings


class BrokerUnavailable(Exception):
    """The broker did not answer a depth query."""


class QueueDepths(ABC):
    """Messages waiting in each queue: `read` asks the broker, `depth` caches per process.

    Every submission asks `depth`; one broker round trip per queue per second
    per process is enough to notice a backlog of thousands, and costs nothing
    per request.
    """

    def __init__(
        self, *, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_age = max_age
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}
        self._cache_lock = threading.Lock()

    @abstractmethod
    def read(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages waiting (not delivered) in each of `queues`, asked now; BrokerUnavailable."""

    def depth(self, queue: str) -> int:
        """Messages waiting in `queue` (as of at most `max_age` seconds ago)."""
        now = self._clock()
        with self._cache_lock:
            cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < self._max_age:
            return cached[1]
        value = self.read([queue])[queue]
        with self._cache_lock:
            self._cache[queue] = (now, value)
        return value

    @abstractmethod
    def close(self) -> None:
        """Release broker connections this object opened."""


class RedisQueueDepths(QueueDepths):
    """LLEN of kombu's list per queue (`{prefix}{queue}`, its global_keyprefix)."""

    def __init__(
        self, client: redis.Redis, prefix: str, *, owns_client: bool = False, **cache
    ) -> None:
        super().__init__(**cache)
        self._redis = client
        self._prefix = prefix
        self._owns_client = owns_client

    def read(self, queues: Iterable[str]) -> dict[str, int]:
        names = list(queues)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for queue in names:
                pipe.llen(keys.queue_list(self._prefix, queue))
            lengths = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis broker: {exc.__class__.__name__}") from exc
        return {queue: int(length) for queue, length in zip(names, lengths, strict=True)}

    def close(self) -> None:
        if self._owns_client:
            self._redis.close()


class AmqpQueueDepths(QueueDepths):
    """RabbitMQ's ready-message count per queue, from a passive queue.declare.

    One connection and channel per process, opened on first use, reopened
    after an error. A passive declare never creates anything: a queue no
    worker has declared yet holds nothing, so it reads 0. The count excludes
    messages delivered to a consumer and not yet acked (RabbitMQ requeues
    those itself if that consumer dies).
    """

    def __init__(self, url: str, *, connect_timeout: float = 2.0, **cache) -> None:
        super().__init__(**cache)
        self._url = url
        self._connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._channel = None
        self._io_lock = threading.Lock()
        probe = Connection(url)  # loads the transport only; connects on first use
        self._errors = (OperationalError, *probe.connection_errors, *probe.channel_errors)

    def read(self, queues: Iterable[str]) -> dict[str, int]:
        names = list(queues)
        with self._io_lock:
            try:
                return {queue: self._ready(queue) for queue in names}
            except self._errors:
                # The broker may have closed an idle connection: reconnect once.
                self._reset()
            try:
                return {queue: self._ready(queue) for queue in names}
            except self._errors as exc:
                self._reset()
                raise BrokerUnavailable(f"RabbitMQ broker: {exc.__class__.__name__}") from exc

    def _ready(self, queue: str) -> int:
        channel = self._open_channel()
        try:
            _name, ready, _consumers = channel.queue_declare(queue=queue, passive=True)
        except self._connection.channel_errors:
            # 404 NOT_FOUND closes the channel; the queue simply does not exist yet.
            self._channel = None
            return 0
        return int(ready)

    def _open_channel(self):
        if self._connection is None:
            # No heartbeat: nothing here drives one, and a dead idle connection
            # is noticed (and reopened) by the next query anyway.
            self._connection = Connection(
                self._url, connect_timeout=self._connect_timeout, heartbeat=0
            )
        # One attempt, no back-off: a submit must not wait on a dead broker.
        self._connection.ensure_connection(max_retries=0)
        if self._channel is None:
            self._channel = self._connection.channel()
        return self._channel

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            # Already broken, most likely: nothing more to release cleanly.
            with contextlib.suppress(*self._errors):
                connection.release()

    def close(self) -> None:
        with self._io_lock:
            self._reset()


def create_queue_depths(settings: Settings, redis_client: redis.Redis, **cache) -> QueueDepths:
    """The reader for `settings.broker_url`; `redis_client` is reused when it is the broker."""
    url = settings.broker_url
    if is_amqp_url(url):
        return AmqpQueueDepths(url, **cache)
    if url == settings.redis_url:
        return RedisQueueDepths(redis_client, settings.redis_key_prefix, **cache)
    # The queues live on the broker, which may be another Redis than REDIS_URL.
    return RedisQueueDepths(
        create_redis(settings, url=url), settings.redis_key_prefix, owns_client=True, **cache
    )

"""What is in flight on the broker: which jobs' messages may still be there, for the sweeps.

On Redis every waiting and unacked message can be listed by its task id; on
RabbitMQ only counts can be read without consuming, so the view is coarser.
`broker_in_flight` picks the view for the configured broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import redis

from infra.broker import envelope, keys
from infra.broker.config import is_amqp_url
from infra.broker.depth import AmqpQueueDepths, QueueDepths
from infra.redis_store import create_redis
from infra.settings import Settings

_SCAN_CHUNK = 1000


class InFlight(Protocol):
    """What the broker can tell the re-dispatch sweep about PENDING jobs' messages."""

    # True when every message waiting or held by a worker is listed (Redis): a
    # job whose message is absent then has no worker running it either.
    exact: bool

    def present(self, candidates: Sequence[tuple[str, str]]) -> set[str]:
        """Ids among (job id, queue) `candidates` whose message may still be on the broker."""
        ...

    def close(self) -> None:
        """Release the broker connections this view opened."""
        ...


class RedisInFlight:
    """Exact on Redis: every waiting and unacked message is listed by its task id."""

    exact = True

    def __init__(self, client: redis.Redis, prefix: str, *, owns_client: bool = False) -> None:
        self._redis = client
        self._prefix = prefix
        self._owns_client = owns_client

    def present(self, candidates: Sequence[tuple[str, str]]) -> set[str]:
        ids = broker_task_ids(self._redis, self._prefix, {queue for _id, queue in candidates})
        return {job_id for job_id, _queue in candidates if job_id in ids}

    def close(self) -> None:
        if self._owns_client:
            self._redis.close()


class AmqpInFlight:
    """On RabbitMQ, judged by each queue's ready-message count (ids cannot be listed cheaply).

    RabbitMQ requeues a delivery itself when its consumer's connection dies
    (a killed worker, a silent host after the heartbeat), so an accepted
    message is either ready in its queue, held by a live worker, or never
    got there (a publish lost before the confirm, a purged or deleted
    queue). Reading a message's id would mean consuming the queue. So a
    PENDING job counts as possibly present while its queue holds any ready
    message: a backlog older than the threshold is still draining, and a
    job lost behind it is re-published by the first sweep after it drains.
    When the queue reports 0 ready messages, the job's message is either
    gone or held unacked by a live worker that has not claimed it yet; it is
    re-published, which is safe: the job claim makes whichever copy runs
    second a no-op (and ledger entries are unique per job and step).
    Held messages cannot be listed at all: not exact.
    """

    exact = False

    def __init__(self, depths: QueueDepths) -> None:
        self._depths = depths

    def present(self, candidates: Sequence[tuple[str, str]]) -> set[str]:
        ready = self._depths.read(sorted({queue for _id, queue in candidates}))
        return {job_id for job_id, queue in candidates if ready[queue] > 0}

    def close(self) -> None:
        self._depths.close()


def broker_task_ids(client: redis.Redis, prefix: str, queues: Iterable[str]) -> set[str]:
    """Task ids of every message waiting in `queues` or delivered but not yet acked (Redis)."""
    ids: set[str] = set()
    for queue in queues:
        for key in keys.queue_lists(prefix, queue):
            start = 0
            while chunk := client.lrange(key, start, start + _SCAN_CHUNK - 1):
                ids.update(filter(None, (envelope.task_id(raw) for raw in chunk)))
                start += _SCAN_CHUNK
    # kombu's unacked hash: delivery tag → [message, exchange, routing key].
    for _tag, raw in client.hscan_iter(keys.unacked(prefix), count=_SCAN_CHUNK):
        if task_id := envelope.unacked_task_id(raw):
            ids.add(task_id)
    return ids


def broker_in_flight(settings: Settings, redis_client: redis.Redis) -> InFlight:
    """The sweep's view of `settings.broker_url`; `redis_client` is reused when it is the broker."""
    url = settings.broker_url
    if is_amqp_url(url):
        return AmqpInFlight(AmqpQueueDepths(url))
    if url == settings.redis_url:
        return RedisInFlight(redis_client, settings.redis_key_prefix)
    # The queues live on the broker, which may be another Redis than REDIS_URL.
    client = create_redis(settings, url=url)
    return RedisInFlight(client, settings.redis_key_prefix, owns_client=True)

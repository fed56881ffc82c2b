"""Publishing job messages: every submission, login's and the sweeps' included, goes through here.

With a Redis broker a job message is one LPUSH of Celery's own protocol-2
envelope (shared/broker/envelope.py) onto kombu's list: Celery's `send_task`
costs about 1 ms of CPU per call (signature, routing, producer pool, a new
Redis client object per publish inside kombu). Any other broker, or
BROKER_FAST_PUBLISH=false, goes through `send_task` on a producer-only Celery
app configured exactly like the workers' (shared/broker/config.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from shared.broker import envelope, keys
from shared.broker.config import celery_broker_config
from shared.lean_pipeline import LeanPipelines
from shared.settings import Settings

__all__ = [
    "BrokerError",
    "CeleryPublisher",
    "JobMessage",
    "Publisher",
    "RedisListPublisher",
    "build_publisher",
]

# Queues more commands on the publisher's own pipeline (same Redis server;
# redis-py's Pipeline or a LeanPipeline, which has evalsha and execute_command);
# publish_many hands back their answers.
PipelineExtra = Callable[[Any], None]


class JobMessage(NamedTuple):
    """One job message to publish: `task(job_id)` on `queue`, with `headers`."""

    task: str
    job_id: str
    queue: str
    headers: dict[str, Any]


class Publisher(Protocol):
    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        """Put `task(job_id)` on `queue`; raises BrokerError when the broker is down."""
        ...

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        """Publish each message; per message None (on the broker) or the BrokerError it met.

        `extra` (only for a Redis publisher, see `shares_redis`) queues more
        commands behind the messages in the same round trip; their answers
        (exceptions included) come second.
        """
        ...

    def shares_redis(self, url: str) -> bool:
        """Whether the broker is the Redis at `url`, so `extra` commands may ride along."""
        ...

    def close(self) -> None:
        """Release the broker connections this publisher opened."""
        ...


class CeleryPublisher:
    """Publishes through Celery's own producer (any broker)."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        self.app.send_task(
            task,
            args=[job_id],
            task_id=job_id,
            queue=queue,
            # Nobody waits on these results: skip the backend subscription.
            ignore_result=True,
            headers=headers,
        )

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        if extra is not None:
            raise ValueError("a Celery publisher has no Redis pipeline to share")
        # One send_task each: kombu's producer has no batch publish. After the
        # first failure the broker is down: the rest are refused without waiting.
        errors: list[BrokerError | None] = []
        failed: BrokerError | None = None
        for message in messages:
            if failed is None:
                try:
                    self.publish(*message)
                except BrokerError as exc:
                    failed = exc
            errors.append(failed)
        return errors, []

    def shares_redis(self, url: str) -> bool:
        return False

    def close(self) -> None:
        self.app.close()


class RedisListPublisher:
    """Writes job messages straight onto the Redis broker's queue lists."""

    def __init__(self, client: redis.Redis, key_prefix: str, url: str = "") -> None:
        self._redis = client
        # Each batch of submissions is one pipeline on connections of its own.
        self._pipelines = LeanPipelines(client)
        self._prefix = key_prefix
        self._url = url
        self._origin = f"{os.getpid()}@{socket.gethostname()}"

    def message(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> str:
        """The serialized message, as kombu's Redis transport stores it."""
        return envelope.job_message(task, job_id, queue, headers, origin=self._origin)

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        message = self.message(task, job_id, queue, headers)
        try:
            self._redis.lpush(keys.queue_list(self._prefix, queue), message)
        except redis.RedisError as exc:
            raise BrokerError(f"broker unavailable: {exc.__class__.__name__}") from exc

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        """All messages in one pipelined round trip: one LPUSH per queue, in submission order.

        LPUSH k m1 m2 leaves m1 nearest the tail, where workers BRPOP: first in,
        first out, as separate publishes would be.
        """
        by_queue: dict[str, list[str]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).append(self.message(*message))
        pipe = self._pipelines.pipeline()
        for queue, serialized in by_queue.items():
            pipe.lpush(keys.queue_list(self._prefix, queue), *serialized)
        if extra is not None:
            extra(pipe)
        try:
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            failed = BrokerError(f"broker unavailable: {exc.__class__.__name__}")
            failed.__cause__ = exc
            return [failed] * len(messages), []
        pushed = dict(zip(by_queue, answers, strict=False))
        errors: list[BrokerError | None] = []
        for message in messages:
            answer = pushed[message.queue]
            if isinstance(answer, Exception):
                errors.append(BrokerError(f"broker refused the message: {answer}"))
            else:
                errors.append(None)
        return errors, answers[len(by_queue) :]

    def shares_redis(self, url: str) -> bool:
        """Whether this publisher's broker is the Redis at `url` (one pipeline can serve both)."""
        return url == self._url

    def close(self) -> None:
        self._pipelines.close()
        self._redis.close()


def producer_app(settings: Settings) -> Celery:
    """A Celery app that only publishes: the workers' broker configuration, no tasks."""
    app = Celery("conveyor-producer", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(celery_broker_config(settings))
    return app


def build_publisher(settings: Settings) -> Publisher:
    """The lean Redis publisher when the broker is Redis and BROKER_FAST_PUBLISH, else Celery's."""
    url = settings.broker_url
    if settings.broker_fast_publish and url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        return RedisListPublisher(client, settings.redis_key_prefix, url)
    return CeleryPublisher(producer_app(settings))

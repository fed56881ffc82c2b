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
from typing import Any, Protocol

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from shared.broker import envelope, keys
from shared.broker.config import celery_broker_config
from shared.settings import Settings

__all__ = ["BrokerError", "CeleryPublisher", "Publisher", "RedisListPublisher", "build_publisher"]


class Publisher(Protocol):
    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        """Put `task(job_id)` on `queue`; raises BrokerError when the broker is down."""
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

    def close(self) -> None:
        self.app.close()


class RedisListPublisher:
    """Writes job messages straight onto the Redis broker's queue lists."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix
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

    def close(self) -> None:
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
        return RedisListPublisher(client, settings.redis_key_prefix)
    return CeleryPublisher(producer_app(settings))

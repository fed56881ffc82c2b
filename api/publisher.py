"""Publishing job messages: one LPUSH of a Celery protocol-2 message onto kombu's Redis list.

Celery's `send_task` costs about 1 ms of CPU per call (signature, routing,
producer pool, a new Redis client object per publish inside kombu). A job
message here is always the same shape: one positional argument (the job id),
JSON, no ETA, no result. So with a Redis broker the web process writes that
message itself, with one pooled client, in exactly the envelope kombu's Redis
transport writes (tests/test_publisher.py compares the two field by field and
runs real workers on it). Any other broker, or BROKER_FAST_PUBLISH=false,
goes through `send_task`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from typing import Any, Protocol

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

# Celery's protocol-2 "embed" part of a plain task call.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Publisher(Protocol):
    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None: ...


class CeleryPublisher:
    """Publishes through Celery's own producer (any broker)."""

    def __init__(self, celery_app: Celery) -> None:
        self._app = celery_app

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        self._app.send_task(
            task,
            args=[job_id],
            task_id=job_id,
            queue=queue,
            # The web process never waits on results: skip the backend subscription.
            ignore_result=True,
            headers=headers,
        )


class RedisListPublisher:
    """Writes job messages straight onto the Redis broker's queue lists."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._origin = f"{os.getpid()}@{socket.gethostname()}"

    def message(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> str:
        """The serialized message, as kombu's Redis transport stores it."""
        body = json.dumps([[job_id], {}, _EMBED], separators=(", ", ": "))
        envelope = {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": job_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": job_id,
                "parent_id": None,
                "argsrepr": repr([job_id]),
                "kwargsrepr": "{}",
                "origin": self._origin,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                # Same stamp the before_task_publish hook adds: queue-wait metrics.
                "sent_at": time.time(),
                **headers,
            },
            "properties": {
                "correlation_id": job_id,
                "reply_to": None,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope)

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        try:
            self._redis.lpush(self._prefix + queue, self.message(task, job_id, queue, headers))
        except redis.RedisError as exc:
            raise BrokerError(f"broker unavailable: {exc.__class__.__name__}") from exc


def build_publisher(celery_app: Celery, *, fast: bool, key_prefix: str) -> Publisher:
    """The lean Redis publisher when the broker is Redis and `fast`, else Celery's."""
    url = celery_app.conf.broker_url or ""
    if fast and url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        return RedisListPublisher(client, key_prefix)
    return CeleryPublisher(celery_app)

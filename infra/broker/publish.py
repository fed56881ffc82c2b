"""Publishing job messages: every submission, login's and the sweeps' included, goes through here.

`build_publisher` answers Celery's own producer (`send_task` on a producer-only
app configured exactly like the workers', infra/broker/config.py) for any
broker, or, with a Redis broker and the `fast_publish` adjustment on, the
LPUSH of Celery's envelope in tuning/celery_fast_publish.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from infra import tracing
from infra.broker.config import celery_broker_config
from infra.broker.messages import BrokerError, JobMessage, PipelineExtra, Publisher
from infra.redis_store import create_redis
from infra.settings import Settings, is_redis_url
from tuning import registry as tuning

__all__ = ["BrokerError", "CeleryPublisher", "JobMessage", "Publisher", "build_publisher"]


class CeleryPublisher:
    """Publishes through Celery's own producer (any broker)."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        # Traced, Celery's instrumentation writes the current context over the
        # message's traceparent: publish in the job's own trace, not in that of
        # whatever runs this (a worker releasing another user's job from the fair
        # lines ran in the finished job's).
        with tracing.within(headers):
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


def producer_app(settings: Settings, queues: Sequence[str]) -> Celery:
    """A Celery app that only publishes: the workers' broker configuration, no tasks."""
    app = Celery("conveyor-producer", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(
        celery_broker_config(settings, queues, leases=tuning.enabled(settings, "broker_leases"))
    )
    return app


def build_publisher(settings: Settings, queues: Sequence[str]) -> Publisher:
    """Celery's `send_task`, or with a Redis broker the fast publish of tuning/ when it is on."""
    url = settings.broker_url
    if is_redis_url(url) and tuning.enabled(settings, "fast_publish"):
        from tuning.celery_fast_publish import RedisListPublisher

        # The broker's client (behind Sentinel, the master's): raw replies, redis-py's pool size.
        client = create_redis(settings, url=url, decode_responses=False, max_connections=None)
        tuning.applied("fast_publish")
        return RedisListPublisher(client, settings.redis_key_prefix, url)
    return CeleryPublisher(producer_app(settings, queues))

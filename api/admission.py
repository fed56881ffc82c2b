"""Admission control for job submission: a per-user in-flight cap and queue back-pressure."""

from __future__ import annotations

import logging

import redis
from flask import current_app

from api.errors import ApiError
from api.extensions import resources
from shared.queue_depth import QueueDepths
from shared.redis_store import create_redis

log = logging.getLogger(__name__)

# How long a client should wait before resubmitting to an overloaded queue.
OVERLOADED_RETRY_AFTER_SECONDS = 10


def too_many_inflight(limit: int) -> ApiError:
    return ApiError(
        429,
        "too_many_inflight_jobs",
        f"you already have {limit} unfinished jobs; wait for some to finish",
        {"max_inflight_jobs": limit},
        {"Retry-After": "5"},
    )


def ensure_queue_capacity(queue: str) -> None:
    """503 `overloaded` when `queue` already holds more than QUEUE_MAX_DEPTH messages."""
    limit = resources().settings.queue_max_depth
    try:
        depth = _queue_depths().depth(queue)
    except redis.RedisError:
        # The broker's Redis is unreachable: publishing will fail and answer
        # 503 on its own; nothing to add here.
        return
    if depth > limit:
        log.warning("queue %s overloaded: %d waiting (limit %d)", queue, depth, limit)
        raise ApiError(
            503,
            "overloaded",
            f"the {queue} queue is overloaded; retry later",
            {"queue": queue},
            {"Retry-After": str(OVERLOADED_RETRY_AFTER_SECONDS)},
        )


def _queue_depths() -> QueueDepths:
    depths = current_app.extensions.get("conveyor.queue_depths")
    if depths is None:
        res = resources()
        settings = res.settings
        # The queues live on the broker, which may be another Redis than REDIS_URL.
        same = settings.broker_url == settings.redis_url
        client = res.redis if same else create_redis(settings, url=settings.broker_url)
        depths = QueueDepths(client, settings.redis_key_prefix)
        current_app.extensions["conveyor.queue_depths"] = depths
    return depths

"""The process's Redis client and the key names Conveyor writes."""

from __future__ import annotations

import redis

from infra.settings import Settings


def create_redis(settings: Settings, *, url: str | None = None) -> redis.Redis:
    """One pooled client per process; short timeouts so a dead Redis fails fast, not hangs."""
    return redis.Redis.from_url(
        url or settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        max_connections=200,
    )


class Keys:
    """Every Redis key name Conveyor uses, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job_status(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def notifications(self, user_id: int) -> str:
        return f"{self.prefix}notifications:{user_id}"

    def notifications_read(self, user_id: int) -> str:
        return f"{self.prefix}notifications:{user_id}:read"

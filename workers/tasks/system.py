"""System tasks: the canary that proves a worker consumes."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="system.ping", soft_time_limit=5, time_limit=10, acks_late=False)
def ping() -> str:
    """Round-trip canary for worker liveness checks (stores its result)."""
    return "pong"

"""A real Celery worker in the test process, and queue depths on the Redis broker."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.contrib.testing.worker import start_worker

from shared.jobs.kinds import QUEUES


@contextmanager
def running_worker(
    celery_app, *, concurrency: int = 8, queues: str = ",".join(QUEUES)
) -> Iterator[Any]:
    """A real worker in this process (thread pool), stopped on exit."""
    from workers import runtime

    runtime.reset()
    # A worker tunes its process's collector once ready (tuning/collector.py):
    # here that process is the test run, which gets its own settings back.
    threshold = gc.get_threshold()
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        queues=queues.split(","),
        shutdown_timeout=30,
        loglevel="WARNING",
    ) as controller:
        yield controller
    runtime.reset()
    gc.unfreeze()
    gc.set_threshold(*threshold)


def queue_depth(redis_client, prefix: str, queue: str) -> int:
    return redis_client.llen(f"{prefix}{queue}")


def clear_fair_lines(redis_client, prefix: str) -> None:
    """Empty the fair lines under `prefix` (their jobs' messages were purged); slots kept."""
    fair = [
        key
        for key in redis_client.scan_iter(match=f"{prefix}fair:*", count=1000)
        if not key.endswith(":slots")
    ]
    if fair:
        redis_client.delete(*fair)

"""The drain baseline: a no-op task on Celery's default prefork configuration.

`celery -A bench.noop_app worker -P prefork -c 2` against the same Redis broker
as Conveyor's worker, under the run's key prefix (BENCH_NOOP_REDIS_URL,
BENCH_NOOP_PREFIX). Nothing else is configured: default prefetch (4 per
process), early acks, no result backend.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "noop"


def create_celery(redis_url: str, prefix: str) -> Celery:
    """A default-configured Celery app with one task that does nothing, on queue `noop`."""
    celery = Celery("noop", broker=redis_url, set_as_current=False)
    celery.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        task_default_queue=QUEUE,
    )

    @celery.task(name="noop.noop", ignore_result=True)
    def noop() -> None:
        return None

    return celery


app = (
    create_celery(os.environ["BENCH_NOOP_REDIS_URL"], os.environ["BENCH_NOOP_PREFIX"])
    if "BENCH_NOOP_REDIS_URL" in os.environ
    else None
)

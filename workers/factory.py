"""The Celery app factory: `create_celery_app(settings)` builds and returns, nothing else.

Importing this module, or calling the factory, reads no environment and
touches no global state; `wire_process` is the one call that connects signal
handlers and patches libraries, made by the entry point (workers/app.py) or
by a test that runs a worker in its own process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.broker.config import celery_broker_config
from shared.jobs.kinds import KINDS
from shared.settings import Settings
from workers import broker_leases

TASK_MODULES = [
    "workers.tasks.ledger",
    "workers.tasks.system",
    "workers.tasks.cache",
    "workers.tasks.maintenance",
    "workers.tasks.ai",
    "workers.tasks.webhooks",
]


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app whose broker, backend, key prefix and task limits come from `settings`."""
    app = Celery("conveyor", include=TASK_MODULES, set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(celery_broker_config(settings))
    app.conf.task_annotations = task_annotations(settings)
    app.conf.conveyor_settings = settings
    # Live workers renew their held messages' leases; a dead one's come back.
    app.steps["consumer"].add(broker_leases.LeaseRenewal)
    return app


def task_annotations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each job kind's time limits (shared/jobs/kinds.py), applied to its task by Celery."""
    annotations = {}
    for name, kind in KINDS.items():
        soft, hard = kind.limits(settings.ai_timeout_seconds)
        annotations[name] = {"soft_time_limit": soft, "time_limit": hard}
    # Beat's warming run does the same work as an admin's cache.warm job.
    annotations["cache.warm_scheduled"] = annotations["cache.warm"]
    return annotations


def wire_process() -> None:
    """Connect the worker's signal handlers and library patches (idempotent)."""
    from workers import ai_runtime, observability, runtime
    from workers.gevent_support import patch_psycopg_for_gevent
    from workers.kombu_patches import guard_detached_transport, reuse_sync_clients

    # kombu 5.7.0 can kill a worker that loses Redis while holding messages.
    guard_detached_transport()
    reuse_sync_clients()
    observability.install()
    runtime.install()
    ai_runtime.install()
    # `worker_ai` runs `-P gevent`: Celery monkey-patches before importing the
    # app, and psycopg2 must then yield to other greenlets while it waits.
    if patch_psycopg_for_gevent():
        from shared.gevent_redis import native_zero_timeout_poll

        # redis-py's per-command "stray data?" check, without a gevent watcher each time.
        native_zero_timeout_poll()

"""The Celery app factory: `create_celery_app(settings)` builds and returns, nothing else.

Importing this module, or calling the factory, reads no environment and
touches no global state; `wire_process(settings)` is the one call that
connects signal handlers and installs the adjustments of tuning/, made by
the entry point (workers/app.py) or by a test that runs a worker itself.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

import tuning
from infra.broker.config import celery_broker_config
from infra.settings import Settings
from shared.jobs.kinds import KINDS, QUEUES

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
    # Every task's requests count the runs a dying pool child loses (workers/poison.py).
    app = Celery(
        "conveyor", include=TASK_MODULES, set_as_current=False, task_cls="workers.poison:JobTask"
    )
    app.config_from_object("celeryconfig")
    leases = tuning.enabled(settings, "broker_leases")
    app.conf.update(celery_broker_config(settings, QUEUES, leases=leases))
    app.conf.task_annotations = task_annotations(settings)
    app.conf.conveyor_settings = settings
    if leases:
        from tuning.broker_leases import LeaseRenewal

        # Live workers renew their held messages' leases; a dead one's come back.
        app.steps["consumer"].add(LeaseRenewal)
        tuning.applied("broker_leases")
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


def wire_process(settings: Settings) -> None:
    """Connect the worker's signal handlers and install its adjustments (idempotent)."""
    from infra import gevent_support
    from workers import ai_runtime, fair_gate, observability, runtime, tracing

    observability.install()
    tracing.install()
    runtime.install()
    fair_gate.install()
    ai_runtime.install()
    # `worker_ai` runs `-P gevent`: Celery monkey-patches before importing the
    # app, and psycopg2 must then yield to other greenlets while it waits.
    gevent_support.cooperative_psycopg()
    tuning.install_celery_worker(
        tuning.selection_of(settings), metrics_token=settings.metrics_token
    )

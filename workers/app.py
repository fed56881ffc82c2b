"""The one Celery app (`celery -A workers.app`), configured from celeryconfig and Settings."""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings
from workers import broker_leases
from workers.kombu_patches import guard_detached_transport

TASK_MODULES = [
    "workers.tasks.ledger",
    "workers.tasks.system",
    "workers.tasks.cache",
    "workers.tasks.maintenance",
    "workers.tasks.ai",
]


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app whose broker, backend and key prefix come from `settings`."""
    # kombu 5.7.0 can kill a worker that loses Redis while holding messages.
    guard_detached_transport()
    app = Celery("conveyor", include=TASK_MODULES)
    app.config_from_object("celeryconfig")
    prefix = settings.redis_key_prefix
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        # Every broker and result key lives under Conveyor's prefix, so several
        # stacks (or test runs) can share one Redis without seeing each other.
        broker_transport_options={
            **app.conf.broker_transport_options,
            **broker_leases.transport_options(settings.broker_visibility_timeout),
            "global_keyprefix": prefix,
            "max_connections": broker_max_connections(settings),
        },
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    app.conf.conveyor_settings = settings
    # Live workers renew their held messages' leases; a dead one's come back.
    app.steps["consumer"].add(broker_leases.LeaseRenewal)
    return app


def broker_max_connections(settings: Settings) -> int:
    """Size of kombu's Redis connection pool per worker process.

    kombu's default is 10. A gevent worker acks each finished task on its own
    connection, so 100 greenlets finishing together exhausted it: acks failed
    with MaxConnectionsError, the consumer dropped its broker connection, and
    the messages it held waited out the visibility timeout (an hour).
    """
    return max(50, 2 * settings.ai_worker_concurrency)


app = create_celery_app(Settings.from_env())

# Connects the logging, log-context and task-metrics signal handlers.
import workers.observability  # noqa: E402, F401

# `worker_ai` runs `-P gevent`: Celery monkey-patches before importing this
# module, and psycopg2 must then yield to other greenlets while it waits.
from workers.gevent_support import patch_psycopg_for_gevent  # noqa: E402

patch_psycopg_for_gevent()

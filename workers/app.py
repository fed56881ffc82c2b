"""The one Celery app (`celery -A workers.app`), configured from celeryconfig and Settings."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

import celeryconfig
from shared.queue_depth import is_amqp_url
from shared.settings import Settings
from workers import broker_leases
from workers.kombu_patches import guard_detached_transport

# Seconds of silence after which RabbitMQ drops a worker's connection (and
# requeues its unacked messages) or the worker drops a silent broker.
AMQP_HEARTBEAT_SECONDS = 30

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
    if is_amqp_url(settings.broker_url):
        app.conf.update(amqp_options())
    app.conf.conveyor_settings = settings
    # Live workers renew their held messages' leases; a dead one's come back.
    app.steps["consumer"].add(broker_leases.LeaseRenewal)
    return app


def amqp_options() -> dict[str, Any]:
    """Celery settings for a RabbitMQ broker (the Redis-only transport options are replaced).

    - Publisher confirms: a publish returns once RabbitMQ has the message, so a
      202 is never answered for a message the broker dropped.
    - Quorum queues (durable, replicated): Celery then turns global QoS off and
      delays countdown/ETA messages in RabbitMQ (native delayed delivery)
      instead of holding them unacked in the worker; that needs topic
      exchanges, so each queue gets its own topic exchange here.
    - A 30 s heartbeat: RabbitMQ closes a silent worker's connection within
      about a minute and requeues every message it had not acked.
    """
    return {
        "broker_transport_options": {"confirm_publish": True},
        "broker_heartbeat": AMQP_HEARTBEAT_SECONDS,
        "task_queues": tuple(
            Queue(
                queue.name,
                Exchange(queue.name, type="topic", durable=True),
                routing_key=queue.routing_key,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for queue in celeryconfig.task_queues
        ),
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def delayable_countdown(app: Celery, countdown: float) -> float:
    """`countdown` as a retry on `app`'s broker can take it: at least 1 s when RabbitMQ delays it.

    Native delayed delivery (quorum queues) routes by whole seconds, and
    Celery 5.7 rejects 0 < countdown < 1 with ValueError: the retry's message
    is then dropped and its job never runs again.
    """
    if 0 < countdown < 1 and is_amqp_url(app.conf.broker_url or ""):
        return 1.0
    return countdown


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

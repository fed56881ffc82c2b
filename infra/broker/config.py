"""Celery's broker settings for Conveyor's broker (Redis or RabbitMQ), from Settings.

The worker's Celery app (workers/factory.py) and the web's producer
(infra/broker/publish.py) both take their broker configuration from
`celery_broker_config`, so the two can never disagree on queues, key prefix
or transport options. The queue names come from the caller (the job kinds,
shared/jobs/kinds.py), as celeryconfig.py's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kombu import Exchange, Queue

from infra.redis_store import celery_transport_options, celery_url
from infra.settings import Settings

# kombu's names for RabbitMQ (0-9-1) transports.
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "pyamqps")
# Seconds of silence after which RabbitMQ drops a worker's connection (and
# requeues its unacked messages) or the worker drops a silent broker.
AMQP_HEARTBEAT_SECONDS = 30
# kombu scans for expired leases every `unacked_restore_interval` seconds; at
# most this often, so recovery takes the visibility timeout plus one scan.
MAX_RESTORE_INTERVAL = 10.0


def is_amqp_url(url: str) -> bool:
    """True when `url` names a RabbitMQ broker (amqp://, amqps://, pyamqp://)."""
    return url.partition("://")[0].lower() in _AMQP_SCHEMES


# kombu's own visibility timeout, for a Redis broker without leases (CONVEYOR_TUNING
# without broker_leases): a healthy job held longer than this would run twice.
STOCK_VISIBILITY_TIMEOUT = 3600


def celery_broker_config(
    settings: Settings, queues: Sequence[str], *, leases: bool = True
) -> dict[str, Any]:
    """Celery settings naming the broker and result backend, with their transport options.

    `leases`: live workers renew their held messages (tuning/broker_leases.py),
    so the visibility timeout can be short; without them it is kombu's hour.
    """
    prefix = settings.redis_key_prefix
    broker, backend = settings.broker_url, settings.result_backend
    config: dict[str, Any] = {
        # Behind Sentinel, `sentinel://` URLs and the master's name (infra/redis_store.py).
        "broker_url": celery_url(settings, broker),
        "result_backend": celery_url(settings, backend),
        # Every result key lives under Conveyor's prefix, so several stacks
        # (or test runs) can share one Redis without seeing each other.
        "result_backend_transport_options": {
            "global_keyprefix": prefix,
            **celery_transport_options(settings, backend),
        },
    }
    if is_amqp_url(broker):
        config.update(amqp_options(queues))
    else:
        config["broker_transport_options"] = {
            **redis_lease_options(
                settings.broker_visibility_timeout if leases else STOCK_VISIBILITY_TIMEOUT
            ),
            "global_keyprefix": prefix,
            "max_connections": broker_max_connections(settings),
            **celery_transport_options(settings, broker),
        }
    return config


def redis_lease_options(visibility_timeout: float) -> dict[str, Any]:
    """kombu Redis transport options for leased delivery (tuning/broker_leases.py)."""
    return {
        "visibility_timeout": visibility_timeout,
        # kombu's default scans every 10th tick of 10 s (100 s); scan on every tick.
        "unacked_restore_interval": max(1.0, min(MAX_RESTORE_INTERVAL, visibility_timeout / 3)),
        "unacked_restore_throttle": 1,
    }


def amqp_options(queues: Sequence[str]) -> dict[str, Any]:
    """Celery settings for a RabbitMQ broker.

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
                name,
                Exchange(name, type="topic", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for name in queues
        ),
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def delayable_countdown(broker_url: str, countdown: float) -> float:
    """`countdown` as a retry on this broker can take it: at least 1 s when RabbitMQ delays it.

    Native delayed delivery (quorum queues) routes by whole seconds, and
    Celery 5.7 rejects 0 < countdown < 1 with ValueError: the retry's message
    is then dropped and its job never runs again.
    """
    if 0 < countdown < 1 and is_amqp_url(broker_url or ""):
        return 1.0
    return countdown


def broker_max_connections(settings: Settings) -> int:
    """Size of kombu's Redis connection pool per worker process.

    kombu's default is 10. A gevent worker acks each finished task on its own
    connection, so 100 greenlets finishing together exhausted it: acks failed
    with MaxConnectionsError, the consumer dropped its broker connection, and
    the messages it held waited out the visibility timeout.
    """
    return max(50, 2 * settings.ai_worker_concurrency)

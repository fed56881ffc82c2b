"""Per-process resources for task code, one set per app's settings, rebuilt after a fork."""

from __future__ import annotations

import threading

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from shared.broker.publish import Publisher, build_publisher
from shared.gc_tuning import tune_collector
from shared.resources import Resources
from shared.settings import Settings

_lock = threading.Lock()
_resources: dict[Settings, Resources] = {}
_publishers: dict[Settings, Publisher] = {}


def resources(app: Celery) -> Resources:
    """This process's engine, Redis client and stores for `app`'s settings, built on first use."""
    settings: Settings = app.conf.conveyor_settings
    with _lock:
        res = _resources.get(settings)
        if res is None:
            res = _resources[settings] = Resources.build(settings)
        return res


def publisher(app: Celery) -> Publisher:
    """This process's job publisher for `app`'s broker (the same path the API submits through)."""
    settings: Settings = app.conf.conveyor_settings
    with _lock:
        found = _publishers.get(settings)
        if found is None:
            found = _publishers[settings] = build_publisher(settings)
        return found


def reset() -> None:
    """Close and drop this process's resources (tests that change settings)."""
    with _lock:
        for res in _resources.values():
            res.close()
        for pub in _publishers.values():
            pub.close()
        _resources.clear()
        _publishers.clear()


def _after_fork(**_kwargs: object) -> None:
    # Connections inherited from the parent must not be shared with it.
    with _lock:
        _resources.clear()
        _publishers.clear()
    # A prefork child: the parent collected and froze before forking it, and
    # a collection here would copy every page it still shares with it.
    tune_collector(collect=False)


def _before_pool(**_kwargs: object) -> None:
    # The worker's own process, before a prefork pool forks its children:
    # the one moment a full collection copies nothing.
    tune_collector()


def _ready(**_kwargs: object) -> None:
    # The worker's own process, its pool started: the consumer and, under
    # -P gevent, every task (shared/gc_tuning.py: about a seventh less CPU per
    # AI job, 1 s upstream). Prefork children share its pages: no collection.
    tune_collector(collect=False)


def install() -> None:
    """Forget inherited connections in every prefork child; tune the collector in every process."""
    worker_process_init.connect(_after_fork, weak=False, dispatch_uid="conveyor.runtime.fork")
    worker_init.connect(_before_pool, weak=False, dispatch_uid="conveyor.runtime.init")
    worker_ready.connect(_ready, weak=False, dispatch_uid="conveyor.runtime.ready")

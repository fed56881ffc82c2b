"""Per-process resources for task code, one set per app's settings, rebuilt after a fork."""

from __future__ import annotations

import threading

from celery import Celery
from celery.signals import worker_process_init

from infra.broker.publish import Publisher, build_publisher
from infra.settings import Settings
from shared.jobs.fair import FairPublisher
from shared.jobs.kinds import QUEUES
from shared.resources import Resources

_lock = threading.Lock()
_resources: dict[Settings, Resources] = {}
_publishers: dict[Settings, FairPublisher] = {}


def resources(app: Celery) -> Resources:
    """This process's engine, Redis client and stores for `app`'s settings, built on first use."""
    settings: Settings = app.conf.conveyor_settings
    with _lock:
        res = _resources.get(settings)
        if res is None:
            res = _resources[settings] = Resources.build(settings)
        return res


def publisher(app: Celery) -> FairPublisher:
    """This process's job publisher for `app`'s broker (the same path the API submits through).

    Fair-queue jobs go through their users' lines (shared/jobs/fair.py), as
    the API's do: a re-published job waits its turn, or goes straight on if
    the gate had already released it.
    """
    settings: Settings = app.conf.conveyor_settings
    fair = resources(app).fair
    with _lock:
        found = _publishers.get(settings)
        if found is None:
            inner: Publisher = build_publisher(settings, QUEUES)
            found = _publishers[settings] = FairPublisher(inner, fair)
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


def install() -> None:
    """Forget inherited connections in every prefork child."""
    worker_process_init.connect(_after_fork, weak=False, dispatch_uid="conveyor.runtime.fork")

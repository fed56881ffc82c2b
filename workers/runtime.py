"""Per-process resources for task code, rebuilt after a prefork child is forked."""

from __future__ import annotations

from celery.signals import worker_process_init

from shared.resources import Resources
from workers.app import app

_resources: Resources | None = None


def resources() -> Resources:
    """This process's engine, Redis client and stores, built on first use."""
    global _resources
    if _resources is None:
        _resources = Resources.build(app.conf.conveyor_settings)
    return _resources


def reset() -> None:
    """Drop this process's resources (tests, or after a fork)."""
    global _resources
    if _resources is not None:
        _resources.close()
    _resources = None


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    # Connections inherited from the parent must not be shared with it.
    global _resources
    _resources = None

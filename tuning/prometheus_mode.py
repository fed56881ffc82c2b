"""Repair: prometheus_client's value class chosen again once a worker has chosen its metrics mode.

Changes: assigns `prometheus_client.values.ValueClass` from the library's own
chooser, `values.get_value_class()`, after the worker set (or left unset)
PROMETHEUS_MULTIPROC_DIR in `worker_init`.

Why: prometheus_client picks per-process or file-backed values once, when it
is first imported. The celery command imports it before any worker code runs
(flower's CLI plugin loads with every `celery` command), so without this a
prefork worker's children count their tasks into in-process values nobody
scrapes, and the worker's /metrics shows none of its tasks.

Written against: prometheus-client 0.26.0 (the module global `values.ValueClass`).
Breaks: tests/ops/test_metrics_multiprocess.py and tests/ops/test_worker_process_observability.py.
Off: `CONVEYOR_TUNING=-prometheus_mode` (a repair: `off` keeps it); a prefork
worker's task metrics then miss its children's tasks.
"""

from __future__ import annotations


def follow_environment() -> None:
    """Make metrics created from now on use the value class PROMETHEUS_MULTIPROC_DIR calls for."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()

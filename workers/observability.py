"""Celery signal hooks: JSON logging, per-task log context and task metrics for workers and beat.

prometheus_client is imported only inside functions: a prefork worker must
choose its metrics mode (per-process or multiprocess files) in `worker_init`,
before anything imports the library, because the library fixes that choice at
import time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime
from typing import Any

from celery import Task
from celery.signals import (
    before_task_publish,
    celeryd_init,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)

from infra import logging_setup

log = logging.getLogger("conveyor.tasks")

# perf_counter at task start, by task id (one entry per task running in this process).
_started: dict[str, float] = {}
# Tasks of this process that ended REVOKED while running (workers/revocation.py).
_revoked: set[str] = set()
_metrics_dir: str | None = None


@functools.cache
def task_metrics() -> dict[str, Any]:
    """The task metric objects, created on first use (after the metrics mode is fixed)."""
    from prometheus_client import Counter, Histogram

    buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
    return {
        "started": Counter("conveyor_task_started", "Tasks started.", ["task"]),
        "succeeded": Counter("conveyor_task_succeeded", "Tasks that returned.", ["task"]),
        "failed": Counter("conveyor_task_failed", "Tasks that raised.", ["task"]),
        "retried": Counter("conveyor_task_retried", "Task retries scheduled.", ["task"]),
        "revoked": Counter(
            "conveyor_task_revoked", "Tasks that found their job cancelled.", ["task"]
        ),
        "runtime": Histogram(
            "conveyor_task_runtime_seconds", "Task run time.", ["task"], buckets=buckets
        ),
        "queue_wait": Histogram(
            "conveyor_task_queue_wait_seconds",
            "Time from publish (or retry ETA) to start.",
            ["task"],
            buckets=buckets,
        ),
    }


@functools.cache
def batch_metrics() -> dict[str, Any]:
    """Metrics of the ledger worker's batches (tuning/celery_ledger_batches.py)."""
    from prometheus_client import Histogram

    return {
        "size": Histogram(
            "conveyor_ledger_batch_size",
            "Ledger jobs posted per database call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
        ),
    }


def request_context(task: Task) -> dict[str, Any]:
    """Log fields for the task being run: request id, task id, job kind, user id."""
    request = task.request
    headers = request.headers or {}
    return {
        "request_id": getattr(request, "request_id", None) or headers.get("request_id"),
        "task_id": request.id,
        "job_kind": task.name,
        "user_id": getattr(request, "user_id", None) or headers.get("user_id"),
        "retries": request.retries or None,
    }


def queue_wait_seconds(task: Task, now: float) -> float | None:
    """Seconds between the message's publish time (or its retry ETA) and `now`."""
    request = task.request
    sent_at = getattr(request, "sent_at", None) or (request.headers or {}).get("sent_at")
    if sent_at is None:
        return None
    ready_at = float(sent_at)
    if request.eta:
        with contextlib.suppress(ValueError):
            ready_at = max(ready_at, datetime.fromisoformat(str(request.eta)).timestamp())
    return max(0.0, now - ready_at)


def _setup_logging(**_kwargs: Any) -> None:
    # Connecting here stops Celery from configuring logging itself: worker and
    # beat (and Celery's own loggers) write Conveyor's JSON lines. The signal
    # names no app: the process's current one (set by its entry point) is it.
    from celery import current_app

    logging_setup.configure_logging(current_app.conf.conveyor_settings)


def _quiet_banner(instance: Any = None, **_kwargs: Any) -> None:
    # The multi-line start-up banner is not a log line; JSON log pipelines
    # would split it into garbage records.
    if instance is not None and instance.app.conf.conveyor_settings.log_format == "json":
        instance.quiet = True


def _stamp_message(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    if headers is None:
        return
    # The publish time, for queue-wait; a retry is a new publish and is restamped.
    headers["sent_at"] = time.time()
    # Tasks published by a task inherit the request id that caused them.
    context = logging_setup.current_context()
    if not headers.get("request_id") and context.get("request_id"):
        headers["request_id"] = context["request_id"]


def _task_started(task_id: str = "", task: Task | None = None, **_kwargs: Any) -> None:
    if task is None:
        return
    logging_setup.clear()
    logging_setup.bind(**request_context(task))
    _started[task_id] = time.perf_counter()
    metrics = task_metrics()
    metrics["started"].labels(task.name).inc()
    wait = queue_wait_seconds(task, time.time())
    if wait is not None:
        metrics["queue_wait"].labels(task.name).observe(wait)
    log.info("task started", extra={"queue_wait_ms": None if wait is None else round(wait * 1000)})


def _task_finished(
    task_id: str = "", task: Task | None = None, state: str | None = None, **_kwargs: Any
) -> None:
    started = _started.pop(task_id, None)
    if task_id in _revoked:
        _revoked.discard(task_id)
        state = "REVOKED"  # Celery's tracer says IGNORED: the task raised Ignore after it
    if task is not None and started is not None:
        runtime = time.perf_counter() - started
        task_metrics()["runtime"].labels(task.name).observe(runtime)
        log.info("task finished", extra={"state": state, "duration_ms": round(runtime * 1000, 2)})
    logging_setup.clear()


def _task_succeeded(sender: Task | None = None, **_kwargs: Any) -> None:
    if sender is not None:
        task_metrics()["succeeded"].labels(sender.name).inc()


def _task_failed(sender: Task | None = None, **_kwargs: Any) -> None:
    if sender is not None:
        task_metrics()["failed"].labels(sender.name).inc()


def _task_revoked(sender: Task | None = None, request: Any = None, **_kwargs: Any) -> None:
    if sender is None:
        return
    task_metrics()["revoked"].labels(sender.name).inc()
    task_id = getattr(request, "id", None)
    if task_id in _started:  # running in this process: its "task finished" line says REVOKED
        _revoked.add(task_id)


def _task_retried(sender: Task | None = None, **_kwargs: Any) -> None:
    if sender is not None:
        task_metrics()["retried"].labels(sender.name).inc()


def start_metrics_server(
    port: int, *, multiprocess_dir: str | None = None, host: str = "127.0.0.1"
) -> Any:
    """Serve task metrics on `host`:`port` (aggregating `multiprocess_dir` when given)."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if multiprocess_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def _worker_init(sender: Any = None, **_kwargs: Any) -> None:
    global _metrics_dir
    settings = sender.app.conf.conveyor_settings
    port = settings.worker_metrics_port
    # Never write into a directory inherited from the web process's environment.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if not port:
        return
    from celery import concurrency

    # Still a name like "prefork" or "gevent" here; Celery resolves it just after.
    pool = concurrency.get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    if "prefork" in pool.__module__:
        # Prefork children each count their own tasks; they share them through
        # files in a directory private to this worker and fresh on every start.
        _metrics_dir = tempfile.mkdtemp(prefix="conveyor-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    _choose_value_class(settings)
    # Loopback unless WORKER_METRICS_HOST says otherwise: the exporter has no auth.
    host = settings.worker_metrics_host
    start_metrics_server(port, multiprocess_dir=_metrics_dir, host=host)
    log.info(
        "task metrics on %s:%s (%s)", host, port, "multiprocess" if _metrics_dir else "in-process"
    )


def _choose_value_class(settings: Any) -> None:
    """Make metrics created from now on follow the mode chosen above (tuning/prometheus_mode.py)."""
    import tuning

    if tuning.enabled(settings, "prometheus_mode"):
        from tuning import prometheus_mode

        prometheus_mode.follow_environment()
        tuning.applied("prometheus_mode")


def _child_exit(pid: int | None = None, **_kwargs: Any) -> None:
    if _metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), path=_metrics_dir)


def _worker_exit(**_kwargs: Any) -> None:
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


# (signal, handler): connected by `install`, never at import.
_HANDLERS = (
    (setup_logging, _setup_logging),
    (celeryd_init, _quiet_banner),
    (before_task_publish, _stamp_message),
    (task_prerun, _task_started),
    (task_postrun, _task_finished),
    (task_success, _task_succeeded),
    (task_failure, _task_failed),
    (task_retry, _task_retried),
    (task_revoked, _task_revoked),
    (worker_init, _worker_init),
    (worker_process_shutdown, _child_exit),
    (worker_shutdown, _worker_exit),
)


def install() -> None:
    """Connect the logging, log-context and task-metrics handlers (once per process)."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, weak=False, dispatch_uid=f"conveyor.{handler.__name__}")

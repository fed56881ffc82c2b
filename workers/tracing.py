"""Tracing in Celery processes: each task run a child of the publish that sent it.

OpenTelemetry's maintained Celery instrumentation makes a consumer span of
every task run, continuing the W3C context the message headers carry (Conveyor
writes them itself on every publish path: infra/tracing.py), and puts the
current context into the headers of what a task publishes through Celery
(retries). Where the exporter starts matters:
- prefork: in each pool child, after the fork (`worker_process_init`), never
  in the parent, whose exporter thread would not survive the fork; and each
  child exports what it buffered before it exits, also when
  `max_tasks_per_child` recycles it (`worker_process_shutdown`:
  opentelemetry-python-contrib#4916);
- gevent, threads, solo: in the worker itself (`worker_init`). Under gevent
  each task runs in a greenlet of its own that starts with an empty context
  (opentelemetry-python#4379); the instrumentation's prerun handler runs in
  that greenlet and attaches the message's context there, so the run's spans
  (SQL, Redis, the upstream call) have their parent;
- beat (`beat_init`), whose publishes then carry its context.
Nothing here runs while tracing is off.
"""

from __future__ import annotations

from typing import Any

from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from infra import tracing

_process = "worker"


def _start(settings: Any, process: str) -> None:
    if not tracing.configure(settings, process):
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracing.tracer_provider())


def _worker_started(sender: Any = None, **_kwargs: Any) -> None:
    global _process
    settings = sender.app.conf.conveyor_settings
    if not settings.tracing:
        return
    from celery import concurrency

    pool = concurrency.get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    # The Procfile's names: the gevent pool is worker_ai's.
    _process = "worker_ai" if "gevent" in pool.__module__ else "worker"
    if "prefork" in pool.__module__:
        return  # each child starts its own, after the fork
    _start(settings, _process)


def _child_started(**_kwargs: Any) -> None:
    from celery import current_app

    _start(current_app.conf.conveyor_settings, _process)


def _beat_started(sender: Any = None, **_kwargs: Any) -> None:
    _start(sender.app.conf.conveyor_settings, "beat")


def _exiting(**_kwargs: Any) -> None:
    # A child recycled by max_tasks_per_child exits right after this: export now.
    tracing.shutdown()


_HANDLERS = (
    (worker_init, _worker_started),
    (worker_process_init, _child_started),
    (beat_init, _beat_started),
    (worker_process_shutdown, _exiting),
    (worker_shutdown, _exiting),
)


def install() -> None:
    """Connect the tracing start-up and flush handlers (once per process)."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, weak=False, dispatch_uid=f"conveyor.tracing.{handler.__name__}")

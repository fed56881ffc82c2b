"""Every adjustment Conveyor makes to third-party code, in one room; each one can be turned off.

An adjustment replaces a library's method, reads a private attribute, or
sends on sockets of its own where the library's path is slow or wrong.
Nothing outside this package does any of that (tests/test_architecture.py).
Each module opens with what it changes, why (one line; the figures are in
docs/benchmarks.md), the versions it was written against (`TARGETS`), the
test that breaks when the library changes, and how to turn it off.

None is applied at import. The process entry points install them:
gunicorn.conf.py's hooks (`install_arbiter`, `install_web_worker`),
workers/factory.py's `wire_process` (`install_celery_worker`), and the app
factories, which ask `enabled(settings, name)` for their own pieces.

`CONVEYOR_TUNING` selects them: `on` (the default), `off`, or a list such as
`off,+collector` or `-gunicorn_balance,-fast_publish`. `off` runs every
process on the stock libraries for everything that is only about speed; the
*repairs* stay on unless named (`off,-broker_leases`), because without
them a documented guarantee goes (docs/tuning.md says which).

An adjustment whose target library is not at the version it declares is
not applied: the process logs an error naming both versions and runs the
stock path (`check`), and tests/tuning/test_versions.py fails until someone
has re-checked it against the new release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tuning.registry import (
    ADJUSTMENTS,
    BY_NAME,
    REPAIR,
    SPEED,
    STATE,
    Adjustment,
    Selection,
    TuningError,
    applied,
    check,
    enabled,
    installed_version,
    mismatches,
    refused,
    selection_of,
    summary,
)

log = logging.getLogger(__name__)

__all__ = [
    "ADJUSTMENTS",
    "BY_NAME",
    "REPAIR",
    "SPEED",
    "STATE",
    "Adjustment",
    "Selection",
    "TuningError",
    "applied",
    "check",
    "enabled",
    "install_arbiter",
    "install_celery_worker",
    "install_traced_engine",
    "install_web_worker",
    "installed_version",
    "mismatches",
    "refused",
    "selection_of",
    "summary",
]


def install_arbiter(server: Any, selection: Selection) -> None:
    """gunicorn's arbiter, before any worker forks (on_starting)."""
    if check(selection, "gunicorn_balance"):
        from tuning import gunicorn_balance

        gunicorn_balance.create_table(server.cfg.workers)


def install_web_worker(worker: Any, selection: Selection) -> None:
    """A gunicorn worker with the app loaded (post_worker_init): gevent or gthread."""
    from infra import gevent_support
    from tuning import collector, gunicorn_balance, gunicorn_one_write, gunicorn_trusted_headers

    _apply(selection, "gunicorn_one_write", gunicorn_one_write.install)
    _apply(selection, "gunicorn_trusted_headers", gunicorn_trusted_headers.install)
    if gevent_support.is_patched():
        from tuning import redis_zero_poll

        _apply(selection, "redis_zero_poll", redis_zero_poll.install)
        _apply(selection, "gunicorn_balance", lambda: gunicorn_balance.install(worker))
    # Last: it freezes what the others made.
    _apply(selection, "collector", collector.tune_collector)
    log.info("tuning of this web worker: %s", summary())


def install_celery_worker(selection: Selection, *, metrics_token: str = "") -> None:
    """A Celery command process (worker, beat, Flower), from workers/factory.py wire_process."""
    from infra import gevent_support
    from tuning import collector, flower_metrics_auth, kombu_detached_guard, kombu_redis

    _apply(selection, "kombu_detached_guard", kombu_detached_guard.install)
    _apply(selection, "kombu_client_reuse", kombu_redis.install)
    if gevent_support.is_patched():
        from tuning import redis_zero_poll

        _apply(selection, "redis_zero_poll", redis_zero_poll.install)
    _apply(selection, "collector", collector.install_worker_signals)
    if flower_metrics_auth.flower_loaded():
        _apply(selection, "flower_metrics_auth", lambda: flower_metrics_auth.install(metrics_token))
    log.info("tuning of this worker: %s", summary())


def install_traced_engine(engine: Any, selection: Selection) -> None:
    """An engine OpenTelemetry's SQLAlchemy instrumentation has just instrumented (infra/db.py)."""
    from tuning import otel_sqlalchemy_pool

    _apply(selection, "otel_sqlalchemy_pool", lambda: otel_sqlalchemy_pool.install(engine))


def _apply(selection: Selection, name: str, install: Callable[[], object]) -> None:
    """Install `name` when this process should (see `check`); note it on when it took."""
    if check(selection, name) and install() is not False:
        applied(name)

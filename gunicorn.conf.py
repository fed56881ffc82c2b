"""Gunicorn settings for the `web` and `events` processes; tuned through environment variables only.

Why each value is what it is: docs/deployment.md ("The web process"); the
measurements are in docs/benchmarks.md. The hooks below install the
adjustments of tuning/ that CONVEYOR_TUNING selects.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import tuning

TUNING = tuning.Selection.parse(os.environ.get("CONVEYOR_TUNING"))

bind = f"{os.environ.get('WEB_BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104

# One gevent process per core, at least two (a crash never leaves the port unserved).
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
# gevent: most of a worker's connections are idle pollers; a greenlet each costs
# a few KB where gthread's fixed pool queues requests behind busy threads.
# `--worker-class gthread` still runs the thread pool (WEB_THREADS per worker).
worker_class = "gevent"
threads = int(os.environ.get("WEB_THREADS", "4"))
# Per worker: the kernel may hand one worker most of the connections.
worker_connections = 10_000
# Requests one gevent worker runs inside the app at once (infra/wsgi_gate.py).
APP_CONCURRENCY = 64
# Longer than the usual balancer idle timeout (60 s): the balancer closes first.
keepalive = 75
timeout = 30
graceful_timeout = 30
# Recycled rarely: a restart drops every kept-alive client of the worker at once.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "500000"))
max_requests_jitter = max_requests // 10
# SYNs queued while thousands of clients connect at once (capped by net.core.somaxconn).
backlog = 4096
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Each worker builds its own app: no connection is made before the fork and shared.
preload_app = False
# No gunicornc control socket: unused, and its default path may not be writable.
control_socket_disable = True
proc_name = "conveyor-web"
# Heartbeat files on memory-backed /dev/shm: an overlay filesystem can stall them.
if os.path.isdir("/dev/shm"):  # noqa: S108
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# The app writes its own JSON access line (request id, timing); gunicorn's lines
# (arbiter, boots, timeouts) go out in the app's format, secrets redacted.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "infra.logging_setup.RedactingFilter"}},
    "formatters": {
        "conveyor": {
            "()": "infra.logging_setup.build_formatter",
            "log_format": os.environ.get("LOG_FORMAT", "json"),
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "conveyor",
            "filters": ["redact"],
            "stream": "ext://sys.stderr",
        },
        "discard": {"class": "logging.NullHandler"},
    },
    # The app adds its own root handler in each worker; one here would print every line twice.
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO").upper(), "handlers": []},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "propagate": False},
        "gunicorn.access": {"handlers": ["discard"], "propagate": False},
    },
}
if tuning.check(TUNING, "gunicorn_quiet_access"):
    logger_class = "tuning.gunicorn_quiet_access.QuietAccessLogger"
    tuning.applied("gunicorn_quiet_access")

# prometheus_client's multiprocess mode: every worker writes samples to files in
# one directory and /metrics sums them, whichever worker answers the scrape.
_METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PRIVATE_METRICS_DIR: list[str] = []
# Descriptors a worker may need: its clients plus Redis, PostgreSQL, metrics files, logs.
_OPEN_FILES_WANTED = worker_connections + 1024


def _raise_open_files_limit(server: Any) -> None:
    # The usual soft limit (1,024) would refuse connections long before
    # worker_connections; the hard limit is as far as an unprivileged process may go.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(_OPEN_FILES_WANTED, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            server.log.warning("could not raise the open-files limit: %s", exc)
    if soft < _OPEN_FILES_WANTED:
        server.log.warning(
            "open-files limit %d is below the %d that worker_connections needs; raise the "
            "hard limit (ulimit -Hn, compose ulimits)",
            soft,
            _OPEN_FILES_WANTED,
        )


def on_starting(server: Any) -> None:
    """Raise the open-files limit, install the arbiter's adjustments, share a metrics directory."""
    _raise_open_files_limit(server)
    tuning.install_arbiter(server, TUNING)
    configured = os.environ.get(_METRICS_DIR_VAR)
    if not configured:
        # However `web` is started, its workers share one directory: a private
        # one, removed again in on_exit.
        configured = tempfile.mkdtemp(prefix="conveyor-metrics-")
        _PRIVATE_METRICS_DIR.append(configured)
        os.environ[_METRICS_DIR_VAR] = configured
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    # A previous run's files would keep adding dead processes' counts to this run's.
    for stale in directory.glob("*.db"):
        stale.unlink()
    server.log.info("prometheus multiprocess directory: %s", directory)


def post_worker_init(worker: Any) -> None:
    """Per worker: cooperative psycopg2, the request gate, held streams' stop, the tuning."""
    from infra import gevent_support

    if gevent_support.cooperative_psycopg():
        from api.held_streams import end_on_sigterm
        from infra.wsgi_gate import bounded

        worker.wsgi = bounded(worker.wsgi, APP_CONCURRENCY)
        # A graceful stop need not wait out the streams web holds (api/held_streams.py).
        end_on_sigterm()
    tuning.install_web_worker(worker, TUNING)


def pre_fork(server: Any, worker: Any) -> None:
    """Give the worker about to be forked a slot in the connection table (if balancing)."""
    from tuning import gunicorn_balance

    gunicorn_balance.assign_slot(worker, server.WORKERS.values())


def child_exit(server: Any, worker: Any) -> None:
    """Free a dead worker's connection slot and drop its live gauges from the metrics directory."""
    from tuning import gunicorn_balance

    gunicorn_balance.release_slot(worker)
    if os.environ.get(_METRICS_DIR_VAR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """Fold the worker's last second of request counts into the shared metrics files."""
    metrics = sys.modules.get("api.metrics")
    if metrics is not None:
        metrics.REQUESTS.flush()


def on_exit(server: Any) -> None:
    """Remove the private metrics directory made in on_starting."""
    for directory in _PRIVATE_METRICS_DIR:
        shutil.rmtree(directory, ignore_errors=True)

"""Gunicorn settings for the `web` process; tuned through environment variables only."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# Two processes per core (at least two, so one crash or restart never leaves
# the port unserved); WEB_CONCURRENCY is the platform convention for overriding.
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, 2 * multiprocessing.cpu_count())))

# gthread: every request waits on Redis, the database or the broker and does
# little CPU work, so threads overlap those waits cheaply. Unlike gevent it
# needs no monkey-patching of the web process, and unlike sync it keeps idle
# keep-alive connections off the worker threads.
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))

# Longer than the usual load balancer idle timeout (60 s), so the balancer
# closes idle connections first and never reuses one we have just closed.
keepalive = 75
# A request still running after 30 s is stuck: jobs are handed to Celery, and
# the API answers 202 at once.
timeout = 30
graceful_timeout = 30
# Recycle workers now and then so a slow leak cannot grow without bound; the
# jitter keeps them from all restarting at the same moment. Not every 1,000
# requests: at a few hundred req/s per worker that restarted one every few
# seconds, each restart costs ~0.7 s of CPU (importing the app) and drops its
# keep-alive connections; `make bench` measured /healthz at 2.5x the req/s
# and a p99 of 30 ms instead of 1.5 s with recycling this rare.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "50000"))
max_requests_jitter = max_requests // 10

# Which proxies may set X-Forwarded-Proto/-For; gunicorn's own variable name.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# The app writes its own JSON access line with the request id and timing;
# gunicorn's would duplicate it in another format.
accesslog = None
errorlog = "-"
# Gunicorn's own lines (the arbiter's start, worker boots and timeouts) in the
# app's format (LOG_FORMAT: json or console), with the same secret redaction.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "shared.logging_setup.RedactingFilter"},
    },
    "formatters": {
        "conveyor": {
            "()": "shared.logging_setup.build_formatter",
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
    # The app adds its own root handler in each worker (create_app); one here
    # as well would print every app line twice.
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO").upper(), "handlers": []},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "propagate": False},
        # A logging config switches gunicorn's access log on; conveyor.access
        # already writes one richer line per request.
        "gunicorn.access": {"handlers": ["discard"], "propagate": False},
    },
}
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "conveyor-web"

# Worker heartbeat files on a container's overlay filesystem can stall and get
# workers killed as "timed out"; memory-backed /dev/shm does not.
# Gunicorn only keeps a per-worker heartbeat there, nothing another user could abuse.
if os.path.isdir("/dev/shm"):  # noqa: S108
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# Not preloaded: each worker builds its own app, so no Redis or database
# connection is created before the fork and shared between processes.
preload_app = False

# No `gunicornc` control socket: nothing here uses it, and its default path
# ($HOME/.gunicorn/gunicorn.ctl) is shared by every gunicorn of the same user
# and may not be writable for the container's user.
control_socket_disable = True


# prometheus_client's multiprocess mode: every gunicorn worker writes its
# samples to files in one directory, and /metrics sums them, so a scrape sees
# the whole process whichever worker answers it. Without the variable each
# worker would report only its own requests.
_METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PRIVATE_METRICS_DIR: list[str] = []


def on_starting(server: Any) -> None:
    """Give the workers an empty shared metrics directory before the first one forks."""
    configured = os.environ.get(_METRICS_DIR_VAR)
    if not configured:
        # However `web` is started (the Procfile line alone, a supervisor, a
        # platform), the workers still share one directory: a private one,
        # removed again in on_exit.
        configured = tempfile.mkdtemp(prefix="conveyor-metrics-")
        _PRIVATE_METRICS_DIR.append(configured)
        os.environ[_METRICS_DIR_VAR] = configured
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    # A previous run's files would keep adding dead processes' counts to this run's.
    for stale in directory.glob("*.db"):
        stale.unlink()
    server.log.info("prometheus multiprocess directory: %s", directory)


def on_exit(server: Any) -> None:
    """Remove the private metrics directory made in on_starting."""
    for directory in _PRIVATE_METRICS_DIR:
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get(_METRICS_DIR_VAR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

"""Gunicorn settings for the `web` process; tuned through environment variables only."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# One gevent process per core (at least two, so one crash or restart never
# leaves the port unserved); WEB_CONCURRENCY is the platform convention for
# overriding. A gevent worker keeps its core busy on its own: a second one per
# core only adds context switches, and halves each process's share of the
# concurrent submits that group commit (shared/jobs/group_commit.py) records
# and publishes together: on two cores, 1.3x the submit rate of four
# processes, and the same /healthz (docs/benchmarks.md, third pass).
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))

# gevent: clients keep connections open and poll now and then, so most of a
# worker's connections are idle; a greenlet per connection costs a few KB
# where gthread's fixed thread pool queues requests behind busy threads.
# `make bench` runs both side by side: under 10,000 waiting clients gevent's
# p99 was 0.3 s and gthread's 4.7 s (both without errors), /healthz 1.12x,
# polls equal within noise; gevent costs ~19 MiB per 1,000 open connections
# against ~4 (docs/benchmarks.md). Requests wait on Redis or PostgreSQL and
# do little CPU work; psycopg2 is made cooperative in post_worker_init,
# redis-py and httpx use the patched sockets. `--worker-class gthread` on the
# command line still runs the thread pool (WEB_THREADS threads per worker).
worker_class = "gevent"
threads = int(os.environ.get("WEB_THREADS", "4"))
# Connections one gevent worker holds at once. Not divided by `workers`: the
# kernel hands new connections to whichever worker accepts first, so one
# worker may end up with most of them. Each costs a greenlet and a descriptor
# (see _raise_open_files_limit).
worker_connections = 10_000

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
# and a p99 of 30 ms instead of 1.5 s with recycling this rare. Not every
# 50,000 either: 10,000 waiting clients poll ~2,000 times a second, so each
# of four workers restarted every ~100 s and sent its 2,500 clients off to
# reconnect at once (`make bench` saw 13,450 answers with Connection: close
# and a p99 of 3.8 s). At that rate 500,000 is one restart per worker every
# ~15 minutes, still often enough to bound a leak.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "500000"))
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


class _NoAccessLineLogger(Logger):
    """Gunicorn's logger without its access line, which the logging config would otherwise build."""

    # Any logconfig_dict turns gunicorn's access logging on: it then formats
    # every request's atoms (a tenth of a /healthz's CPU in `make bench`'s
    # profile) only for the `discard` handler above to drop them.
    def _compute_access_log_enabled(self) -> bool:
        return False

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Nothing: conveyor.access writes one richer line per request."""


logger_class = _NoAccessLineLogger
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


# Requests one gevent worker runs inside the app at once; the rest of its
# connections wait their turn idle. The work is CPU under one GIL, so more
# would not go faster; it would only hold more pooled connections at once:
# past the Redis pool's 200 a poll would fail over to PostgreSQL (slower
# still), which is how 10,000 clients first overwhelmed the gevent worker.
APP_CONCURRENCY = 64

# Connections the kernel queues before a worker accepts them (gunicorn's
# default is 2,048): while thousands of clients connect at once, a queue that
# overflows drops their SYNs and each waits 1, 3, 7 s to retry. Linux caps
# it at net.core.somaxconn.
backlog = 4096

# Descriptors a worker may need: its clients' sockets plus Redis, PostgreSQL,
# metrics files and log pipes.
_OPEN_FILES_WANTED = worker_connections + 1024


def _raise_open_files_limit(server: Any) -> None:
    # The common default soft limit (1,024) would refuse connections long
    # before worker_connections; the hard limit is as far as an unprivileged
    # process may go, and the workers inherit it from the master.
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


def post_worker_init(worker: Any) -> None:
    """Per worker: one-write responses, the collector tuned, cooperative psycopg2 and redis-py."""
    from shared.gc_tuning import tune_collector
    from shared.gunicorn_writes import send_head_with_body

    # A small answer's head and body in one sendall, not two (one segment, one read).
    send_head_with_body()
    # The app is loaded: freeze it and collect less often (shared/gc_tuning.py).
    tune_collector()
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return  # gthread: real threads, nothing to patch
    from psycogreen.gevent import patch_psycopg

    # Without it a database query blocks the OS thread, i.e. every connection
    # the worker holds (the same patch as worker_ai's, workers/gevent_support.py).
    patch_psycopg()
    from shared.gevent_redis import native_zero_timeout_poll

    # redis-py's per-command "stray data?" check, without a gevent watcher each time.
    native_zero_timeout_poll()
    worker.wsgi = _bounded(worker.wsgi, APP_CONCURRENCY)
    from shared import accept_balance

    # Connections arriving together spread evenly over the workers (shared/accept_balance.py).
    accept_balance.install(worker)


def _bounded(app: Any, limit: int) -> Any:
    """`app` run by at most `limit` greenlets at a time; the rest wait, first come first served."""
    from collections import deque

    from gevent.event import Event

    free = [limit]
    waiting: deque[Event] = deque()

    # Not gevent's Semaphore: a newcomer takes a free slot even while others
    # wait, so under sustained overload a waiting request could starve for
    # many seconds (`make bench` saw polls time out after 10 s). Here a
    # leaving request hands its slot straight to the longest waiter.
    def enter() -> None:
        if free[0] > 0 and not waiting:
            free[0] -= 1
            return
        turn = Event()
        waiting.append(turn)
        try:
            turn.wait()
        except BaseException:
            if turn.is_set():
                leave()  # the slot was already ours: pass it on
            else:
                waiting.remove(turn)
            raise

    def leave() -> None:
        if waiting:
            waiting.popleft().set()
        else:
            free[0] += 1

    def bounded_app(environ: dict, start_response: Any) -> Any:
        enter()
        try:
            return app(environ, start_response)
        finally:
            leave()

    return bounded_app


def on_starting(server: Any) -> None:
    """Raise the open-files limit, make the connection table, give workers a metrics directory."""
    _raise_open_files_limit(server)
    from shared import accept_balance

    accept_balance.create_table(server.cfg.workers)
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


def worker_exit(server: Any, worker: Any) -> None:
    """Fold the worker's last requests into the shared metrics files before it exits."""
    # The app counts requests in plain Python objects and folds them into the
    # Prometheus files once a second (api/metrics.py); the last second's would
    # otherwise be lost with the process.
    metrics = sys.modules.get("api.metrics")
    if metrics is not None:
        metrics.REQUESTS.flush()


def pre_fork(server: Any, worker: Any) -> None:
    """Give the worker about to be forked a slot in the connection table."""
    from shared import accept_balance

    accept_balance.assign_slot(worker, server.WORKERS.values())


def child_exit(server: Any, worker: Any) -> None:
    """Free a dead worker's connection slot and drop its live gauges from the metrics directory."""
    from shared import accept_balance

    accept_balance.release_slot(worker)
    if os.environ.get(_METRICS_DIR_VAR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

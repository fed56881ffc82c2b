"""The API's Prometheus metrics and `GET /metrics` (multiprocess-aware for gunicorn)."""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event

from api.errors import ApiError
from api.limits import unlimited
from api.openapi import PlainText, documented
from infra.broker.depth import BrokerUnavailable, QueueDepths
from infra.redis_store import Keys
from shared.jobs.fair import FAIR_QUEUES, FairLines

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_LATENCY = Histogram(
    "conveyor_http_request_duration_seconds",
    "HTTP request latency by route (URL rule), method and status.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
# livesum: the sum over live gunicorn workers; a dead worker's requests drop out.
IN_FLIGHT = Gauge(
    "conveyor_http_requests_in_flight",
    "Requests being handled right now.",
    multiprocess_mode="livesum",
)
JOBS_ACCEPTED = Counter(
    "conveyor_jobs_accepted", "Jobs recorded and published (not replays).", ["kind"]
)
# `pool`: "main" (sessions) or "autocommit" (single-statement job records).
DB_POOL_CHECKED_OUT = Gauge(
    "conveyor_db_pool_checked_out",
    "Database connections in use.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW = Gauge(
    "conveyor_db_pool_overflow",
    "Connections open beyond pool_size.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "conveyor_db_pool_size", "Configured pool_size.", ["pool"], multiprocess_mode="livesum"
)


# How often each process folds its requests into the Prometheus values. A
# scrape folds the answering process's own at once; another worker's requests
# show up at most this much later (Prometheus scrapes every 15 s or so).
FLUSH_SECONDS = 1.0
# Observations one process may hold before a request folds them itself (only
# reached if the flushing thread could not run, e.g. a CPU-bound worker).
_MAX_PENDING = 50_000
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))


class RequestMetrics:
    """The HTTP latency histogram and in-flight gauge, counted per process off the request path.

    prometheus_client's multiprocess values cost a lock, a pid check (a system
    call) and an mmap write per update: four per request (in-flight up and
    down, a bucket and the sum), about a tenth of a poll's CPU. Here a request
    appends one tuple to a list (atomic under the GIL, safe for threads and
    greenlets alike); a background thread (a greenlet under gevent) folds the
    list into the histogram once a second, one update per bucket and label set
    rather than per request, and sets the in-flight gauge. `/metrics` folds
    first (see `scrape_registry`), and so does a process on its way out.
    """

    def __init__(self, histogram: Histogram, in_flight: Gauge) -> None:
        self._histogram = histogram
        self._in_flight_gauge = in_flight
        self._pending: list[tuple[tuple[str, str, int], float]] = []
        # One element per request being served: list.append/pop are atomic.
        self._in_flight: list[None] = []
        self._children: dict[tuple[str, str, int], Any] = {}
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._hooks_registered = False

    def started(self) -> None:
        """A request entered the app."""
        self._in_flight.append(None)
        if self._flusher is None:
            self._start_flusher()

    def finished(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """A request left the app after `seconds`; `route` None: not recorded (scrapes)."""
        # try/except rather than contextlib.suppress: no context manager object per request.
        try:  # noqa: SIM105 - see above
            self._in_flight.pop()
        except IndexError:  # started before a fork, finished after it
            pass
        if route is not None:
            pending = self._pending
            pending.append(((route, method, status), seconds))
            if len(pending) >= _MAX_PENDING:
                self.flush()

    def in_flight(self) -> int:
        """Requests this process is serving right now."""
        return len(self._in_flight)

    def flush(self) -> None:
        """Fold every pending observation into the Prometheus values (and the in-flight gauge)."""
        with self._flush_lock:
            pending = self._pending
            # Only the first n are taken and deleted: a request appending
            # meanwhile adds at the end and is kept for the next flush.
            count = len(pending)
            batch = pending[:count]
            del pending[:count]
            by_labels: dict[tuple[str, str, int], list[float]] = {}
            for key, seconds in batch:
                durations = by_labels.get(key)
                if durations is None:
                    by_labels[key] = [seconds]
                else:
                    durations.append(seconds)
            for key, durations in by_labels.items():
                _observe_all(self._child(key), durations)
            self._in_flight_gauge.set(len(self._in_flight))

    def _child(self, key: tuple[str, str, int]) -> Any:
        child = self._children.get(key)
        if child is None:
            route, method, status = key
            child = self._children[key] = self._histogram.labels(route, method, str(status))
        return child

    def _start_flusher(self) -> None:
        with self._flush_lock:
            if self._flusher is not None:
                return
            if not self._hooks_registered:
                # Registered on first use, not at import: a process that
                # serves no request never flushes.
                self._hooks_registered = True
                os.register_at_fork(after_in_child=self._after_fork)
                atexit.register(self.flush)
            self._flusher = threading.Thread(
                target=self._flush_forever, name="conveyor-metrics-flush", daemon=True
            )
            self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a metrics hiccup must not end the flushing
                log.exception("could not fold request metrics")

    def _after_fork(self) -> None:
        # The parent's requests are the parent's to count; the child starts
        # its own flusher on its first request (threads do not survive fork).
        self._pending = []
        self._in_flight = []
        self._children = {}
        self._flush_lock = threading.Lock()
        self._flusher = None


def _observe_all(child: Any, durations: list[float]) -> None:
    """Observe `durations` on a histogram child: one update per bucket and one for the sum.

    prometheus_client has no public call for many observations (observe()
    takes one, and pays the lock, pid check and mmap write each time). Its
    Histogram child keeps the sum in `_sum` and one non-cumulative value per
    bucket in `_buckets`, which is exactly what observe() increments; another
    version without them gets observe() per duration.
    """
    buckets, sum_value = getattr(child, "_buckets", None), getattr(child, "_sum", None)
    if buckets is None or sum_value is None or len(buckets) != len(_BOUNDS):
        for seconds in durations:
            child.observe(seconds)
        return
    per_bucket = [0] * len(_BOUNDS)
    for seconds in durations:
        per_bucket[bisect_left(_BOUNDS, seconds)] += 1
    sum_value.inc(sum(durations))
    for index, count in enumerate(per_bucket):
        if count:
            buckets[index].inc(count)


REQUESTS = RequestMetrics(HTTP_LATENCY, IN_FLIGHT)


def instrument_pool(engine: Engine, name: str) -> None:
    """Keep the pool gauges for pool `name` current on every checkout and checkin of `engine`."""
    pool = engine.pool
    size = getattr(pool, "size", None)
    if callable(size):
        DB_POOL_SIZE.labels(name).set(size())
    checked_out, overflow_gauge = DB_POOL_CHECKED_OUT.labels(name), DB_POOL_OVERFLOW.labels(name)

    def _update(*_args) -> None:
        checked_out.set(pool.checkedout())
        overflow = getattr(pool, "overflow", None)
        overflow_gauge.set(max(0, overflow()) if callable(overflow) else 0)

    event.listen(engine, "checkout", _update)
    event.listen(engine, "checkin", _update)


class QueueDepthCollector(Collector):
    """Messages waiting in each Celery queue, read from the broker at scrape time."""

    def __init__(self, depths: QueueDepths, queues: Sequence[str]) -> None:
        self.depths, self.queues = depths, list(queues)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "conveyor_queue_depth", "Messages waiting in each queue.", labels=["queue"]
        )
        up = GaugeMetricFamily("conveyor_broker_up", "1 when the broker answered.")
        try:
            for queue, length in self.depths.read(self.queues).items():
                depth.add_metric([queue], length)
            up.add_metric([], 1)
        except BrokerUnavailable:
            up.add_metric([], 0)
        yield depth
        yield up


class FairShareCollector(Collector):
    """Jobs waiting in each fair queue's lines and their users (shared/jobs/fair.py)."""

    def __init__(self, lines: FairLines) -> None:
        self.lines = lines

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily(
            "conveyor_fair_waiting_jobs",
            "Jobs accepted and waiting in a fair queue's per-user lines.",
            labels=["queue"],
        )
        users = GaugeMetricFamily(
            "conveyor_fair_waiting_users",
            "Users with jobs waiting in a fair queue's lines.",
            labels=["queue"],
        )
        try:
            for queue in FAIR_QUEUES:
                waiting.add_metric([queue], self.lines.waiting(queue))
                users.add_metric([queue], self.lines.users_waiting(queue))
        except redis.RedisError:
            pass  # Redis down: no figures rather than wrong ones
        yield waiting
        yield users


class CacheStatsCollector(Collector):
    """Cache hits and misses per cache, from the cache layer's Redis stats hash.

    Contract with the cache layer: a hash at `<prefix>cache:stats` whose fields
    are `<cache name>:hits` and `<cache name>:misses`, incremented with HINCRBY.
    The counts are cluster-wide (every process adds to the same hash).
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = f"{keys.prefix}cache:stats"

    def collect(self) -> Iterable[Metric]:
        hits = CounterMetricFamily("conveyor_cache_hits", "Cache hits.", labels=["cache"])
        misses = CounterMetricFamily("conveyor_cache_misses", "Cache misses.", labels=["cache"])
        try:
            stats = self.client.hgetall(self.key)
        except redis.RedisError:
            stats = {}
        for field, value in sorted(stats.items()):
            name, _, outcome = field.rpartition(":")
            family = {"hits": hits, "misses": misses}.get(outcome)
            if family is not None and name:
                family.add_metric([name], float(value))
        yield hits
        yield misses


def scrape_registry(app_registry: CollectorRegistry) -> bytes:
    """The exposition: process metrics (all gunicorn workers) plus this app's live collectors."""
    REQUESTS.flush()  # this process's own requests, up to this one
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared, path=directory)
        base = generate_latest(shared)
    else:
        base = generate_latest(REGISTRY)
    return base + generate_latest(app_registry)


def scrape_authorized(environ: dict, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>` (never without one)."""
    scheme, _, supplied = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


@bp.get("/metrics")
@unlimited
@documented("Prometheus metrics", auth="metrics", responses={200: PlainText(CONTENT_TYPE_LATEST)})
def metrics() -> Response:
    """Prometheus text format, for `Authorization: Bearer <METRICS_TOKEN>` only."""
    settings = current_app.extensions["conveyor"].settings
    if not scrape_authorized(request.environ, settings.metrics_token):
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <METRICS_TOKEN>"
            if settings.metrics_token
            else "metrics are off: set METRICS_TOKEN to scrape them",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = scrape_registry(current_app.extensions["conveyor.metrics"])
    return Response(body, mimetype=CONTENT_TYPE_LATEST)

"""The API's Prometheus metrics and `GET /metrics` (multiprocess-aware for gunicorn)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import redis
from flask import Blueprint, Response, current_app
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

from api.limits import unlimited
from api.openapi import PlainText, documented
from shared.broker.depth import BrokerUnavailable, QueueDepths
from shared.redis_store import Keys

bp = Blueprint("metrics", __name__)

HTTP_LATENCY = Histogram(
    "conveyor_http_request_duration_seconds",
    "HTTP request latency by route (URL rule), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared, path=directory)
        base = generate_latest(shared)
    else:
        base = generate_latest(REGISTRY)
    return base + generate_latest(app_registry)


@bp.get("/metrics")
@unlimited
@documented("Prometheus metrics", auth="none", responses={200: PlainText(CONTENT_TYPE_LATEST)})
def metrics() -> Response:
    """Prometheus text format (unauthenticated: expose it on the internal network only)."""
    body = scrape_registry(current_app.extensions["conveyor.metrics"])
    return Response(body, mimetype=CONTENT_TYPE_LATEST)

"""Per-request observability: log context, access line, slow requests, metrics, query count."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry

from api import metrics
from shared import logging_setup, slow_queries
from shared.broker.depth import create_queue_depths
from shared.resources import Resources

access_log = logging.getLogger("conveyor.access")


def init_app(app: Flask, res: Resources, queues: list[str]) -> None:
    """Install logging, request hooks and the metrics endpoint on `app`."""
    logging_setup.configure_logging(res.settings)
    registry = CollectorRegistry(auto_describe=True)
    # One reader of the real broker's queues, for admission control and /metrics.
    app.extensions["conveyor.queue_depths"] = depths = create_queue_depths(res.settings, res.redis)
    registry.register(metrics.QueueDepthCollector(depths, queues))
    registry.register(metrics.CacheStatsCollector(res.redis, res.keys))
    app.extensions["conveyor.metrics"] = registry
    metrics.instrument_pool(res.engine, "main")
    metrics.instrument_pool(res.autocommit_engine, "autocommit")
    app.config["CONVEYOR_COUNT_QUERIES"] = (
        not res.settings.is_production or res.settings.debug_query_count
    )
    app.before_request(_begin)
    app.after_request(_make_end(res.settings.slow_request_seconds))
    app.teardown_request(_teardown)
    app.register_blueprint(metrics.bp)


def _begin() -> None:
    g.obs_started = time.perf_counter()
    metrics.IN_FLIGHT.inc()
    g.obs_in_flight = True
    logging_setup.clear()
    logging_setup.bind(request_id=g.get("request_id"))
    if _counting():
        g.query_box = slow_queries.start_counting()


# (route, method, status) -> its histogram child: `labels()` validates and
# locks on every call, a measurable share of a /healthz.
_latency_children: dict[tuple[str, str, int], Any] = {}


def _latency(route: str, method: str, status: int) -> Any:
    key = (route, method, status)
    child = _latency_children.get(key)
    if child is None:
        child = _latency_children[key] = metrics.HTTP_LATENCY.labels(route, method, str(status))
    return child


def _make_end(slow_seconds: float) -> Callable[[Response], Response]:
    def _end(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("obs_started", time.perf_counter())
        req = request._get_current_object()  # one context lookup, not one per attribute
        rule = req.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        status = response.status_code
        if route != "/metrics":  # scrapes would otherwise dominate the latency histogram
            _latency(route, req.method, status).observe(elapsed)
        box = g.get("query_box")
        if box is not None:
            response.headers["X-Query-Count"] = str(box[0])
        slow = elapsed >= slow_seconds
        # The access line's fields only when it is written (LOG_LEVEL=WARNING skips it).
        if slow or access_log.isEnabledFor(logging.INFO):
            identity = g.get("identity")
            fields = {
                "method": req.method,
                "route": route,
                "path": req.path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": g.get("request_id"),
                "user_id": getattr(identity, "user_id", None),
            }
            if box is not None:
                fields["query_count"] = box[0]
            if slow:
                access_log.warning("slow request %s %s", req.method, route, extra=fields)
            else:
                access_log.info("%s %s %s", req.method, route, status, extra=fields)
        return response

    return _end


def _teardown(_exc: BaseException | None) -> None:
    if g.pop("obs_in_flight", False):
        metrics.IN_FLIGHT.dec()
    if g.pop("query_box", None) is not None:
        slow_queries.stop_counting()
    logging_setup.clear()


def _counting() -> bool:
    return bool(current_app.config.get("CONVEYOR_COUNT_QUERIES"))

"""Per-request observability: request id, timing, log context, access line, metrics, query count.

One WSGI wrapper (`RequestHooks`) around the Flask app does all of it, plus
the fixed response headers and the body-size limit that api/hardening.py hands
it: each request pays one function call and a few tuple appends rather than a
chain of Flask hooks, each looked up and called through Flask's machinery, and
werkzeug `Headers` updates. The Flask side keeps one `before_request` hook
(api/__init__.py) that gives views `g.request_id`, leaves the Request and `g`
where the wrapper finds them, and raises the refusal the wrapper prepared.
Under gunicorn, the fixed headers are checked once per process
(tuning/gunicorn_trusted_headers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from random import getrandbits
from time import perf_counter
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.wsgi import get_content_length

from api import metrics
from infra import logging_setup, slow_queries
from infra.broker.depth import create_queue_depths
from shared.jobs.fair import FairQueueDepths
from shared.resources import Resources

access_log = logging.getLogger("conveyor.access")

# Where the wrapper leaves the request's id for the Flask side (g.request_id).
REQUEST_ID_KEY = "conveyor.request_id"
# Where the Flask side leaves the request's Request (its URL rule) and `g` (the
# caller's identity) for the wrapper: Flask's own environ entry for its Request
# is cleared when the request context ends, before the wrapper looks.
REQUEST_KEY = "conveyor.request"
GLOBALS_KEY = "conveyor.g"
# Where the wrapper leaves the error a request must be refused with (a body
# over the limit `refuse_bodies_over` set), for the Flask side to raise.
REFUSAL_KEY = "conveyor.refusal"
# Where the installed wrapper is kept, for api/hardening.py to hand it its headers.
EXTENSION = "conveyor.request_hooks"
# Route label of requests no URL rule matched (404s, 405s).
UNMATCHED = "<unmatched>"
# Scrapes would otherwise dominate the latency histogram.
UNTIMED_ROUTES = frozenset({"/metrics"})


def init_app(app: Flask, res: Resources, queues: list[str]) -> None:
    """Install logging, the request wrapper and the metrics endpoint on `app`."""
    logging_setup.configure_logging(res.settings)
    registry = CollectorRegistry(auto_describe=True)
    # One reader of the real broker's queues, for admission control and /metrics.
    # The jobs waiting in the fair lines count as queued (shared/jobs/fair.py).
    depths = FairQueueDepths(create_queue_depths(res.settings, res.redis), res.fair)
    app.extensions["conveyor.queue_depths"] = depths
    registry.register(metrics.QueueDepthCollector(depths, queues))
    registry.register(metrics.FairShareCollector(res.fair))
    registry.register(metrics.CacheStatsCollector(res.redis, res.keys))
    app.extensions["conveyor.metrics"] = registry
    metrics.instrument_pool(res.engine, "main")
    metrics.instrument_pool(res.autocommit_engine, "autocommit")
    count_queries = not res.settings.is_production or res.settings.debug_query_count
    app.config["CONVEYOR_COUNT_QUERIES"] = count_queries
    hooks = RequestHooks(
        app.wsgi_app, slow_seconds=res.settings.slow_request_seconds, count_queries=count_queries
    )
    app.wsgi_app = hooks  # type: ignore[method-assign]
    app.extensions[EXTENSION] = hooks
    app.register_blueprint(metrics.bp)


def request_id_for(environ: dict) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh random one."""
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    # Accept the client's id when it is a sane token; never echo arbitrary bytes.
    if 0 < len(incoming) <= 128 and incoming.isprintable():
        return incoming
    # 128 random bits from the process's generator (reseeded in every forked
    # worker): an id to correlate lines, not a secret (clients choose their
    # own), so no system call for the kernel's randomness on every request.
    return f"{getrandbits(128):032x}"


class RequestHooks:
    """WSGI middleware: what every request gets, around the whole Flask app.

    Request id (X-Request-ID, also bound to every log line of the request),
    X-Process-Time, X-Query-Count (when counting), the fixed headers
    `set_default_headers` gave it (added unless the response set them), the
    body-size check `refuse_bodies_over` set, the in-flight gauge, the latency
    histogram (api/metrics.py, folded off the request path) and the JSON
    access line.
    """

    def __init__(self, app: Any, *, slow_seconds: float, count_queries: bool) -> None:
        self.app = app
        self.slow_seconds = slow_seconds
        self.count_queries = count_queries
        self._defaults: list[tuple[str, tuple[str, str]]] = []
        self._default_pairs: list[tuple[str, str]] = []
        self._default_names: frozenset[str] = frozenset()
        self._finish: Callable[[dict, str, list[tuple[str, str]], set[str]], None] | None = None
        self._max_body: int | None = None
        self._refusal: Callable[[], Exception] | None = None

    def set_default_headers(
        self,
        headers: dict[str, str],
        finish: Callable[[dict, str, list[tuple[str, str]], set[str]], None] | None = None,
    ) -> None:
        """Add `headers` to every response that does not set them, then call `finish`.

        `finish(environ, status, headers, names)` gets the names (lower case)
        the response itself had set, and may change `headers` in place.
        """
        self._defaults = [(name.lower(), (name, value)) for name, value in headers.items()]
        self._default_pairs = [pair for _lower, pair in self._defaults]
        self._default_names = frozenset(lower for lower, _pair in self._defaults)
        self._finish = finish
        # Under gunicorn with the adjustment on, its Response takes these very
        # tuples without re-checking them (tuning/gunicorn_trusted_headers.py).
        from tuning import gunicorn_trusted_headers

        gunicorn_trusted_headers.trust(self._default_pairs)

    def refuse_bodies_over(self, limit: int, refusal: Callable[[], Exception]) -> None:
        """Refuse a request whose Content-Length exceeds `limit` bytes, before any work.

        The wrapper only reads the environ; the Flask side raises `refusal()`
        (see REFUSAL_KEY), so the answer takes the usual error path (error
        shape, CORS) and the request still gets its route label.
        """
        self._max_body = limit
        self._refusal = refusal

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        started = perf_counter()
        request_id = environ[REQUEST_ID_KEY] = request_id_for(environ)
        if self._max_body is not None and environ.get("CONTENT_LENGTH"):
            self._check_length(environ)  # only when a body is announced (not on a GET)
        requests = metrics.REQUESTS
        requests.started()
        logging_setup.start_request(request_id)
        box = slow_queries.start_counting() if self.count_queries else None
        answer: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer.append(status)
            defaults = self._defaults
            if defaults:
                # The names the response itself set (a handful: the usual two).
                present = {name.lower() for name, _ in headers}
            headers.append(("X-Request-ID", request_id))
            headers.append(("X-Process-Time", f"{(perf_counter() - started) * 1000:.2f}"))
            if box is not None:
                headers.append(("X-Query-Count", str(box[0])))
            if defaults:
                if present.isdisjoint(self._default_names):  # the usual case: all of them
                    headers.extend(self._default_pairs)
                else:
                    headers.extend(pair for lower, pair in defaults if lower not in present)
                if self._finish is not None:
                    self._finish(environ, status, headers, present)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            elapsed = perf_counter() - started
            if box is not None:
                slow_queries.stop_counting()
            self._record(environ, answer, elapsed, box)
            # The Request refers to the environ: without these two the pair
            # would wait for the cyclic garbage collector.
            environ.pop(REQUEST_KEY, None)
            environ.pop(GLOBALS_KEY, None)
            logging_setup.end_request()

    def _check_length(self, environ: dict) -> None:
        # As werkzeug reads it (None for a chunked body: the stream's own limit applies).
        length = get_content_length(environ)
        if length is not None and length > self._max_body and self._refusal is not None:
            environ[REFUSAL_KEY] = self._refusal()

    def _record(self, environ: dict, answer: list[Any], elapsed: float, box: Any) -> None:
        # The URL rule that matched is the route label.
        request = environ.get(REQUEST_KEY)
        rule = getattr(request, "url_rule", None)
        route = rule.rule if rule is not None else UNMATCHED
        method = environ.get("REQUEST_METHOD", "")
        status = int(answer[0][:3]) if answer else 500
        metrics.REQUESTS.finished(
            None if route in UNTIMED_ROUTES else route, method, status, elapsed
        )
        slow = elapsed >= self.slow_seconds
        # The access line's fields only when it is written (LOG_LEVEL=WARNING skips it).
        if slow or access_log.isEnabledFor(logging.INFO):
            flask_g = environ.get(GLOBALS_KEY)
            identity = flask_g.get("identity") if flask_g is not None else None
            fields = {
                "method": method,
                "route": route,
                "path": getattr(request, "path", None) or environ.get("PATH_INFO", ""),
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": environ.get(REQUEST_ID_KEY),
                "user_id": getattr(identity, "user_id", None),
            }
            if box is not None:
                fields["query_count"] = box[0]
            if slow:
                access_log.warning("slow request %s %s", method, route, extra=fields)
            else:
                access_log.info("%s %s %s", method, route, status, extra=fields)

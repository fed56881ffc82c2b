"""Request metrics counted per process and folded into Prometheus off the request path."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from api import metrics
from api.metrics import LATENCY_BUCKETS, RequestMetrics
from tests.support.metrics import samples, scrape, value

DURATIONS = [0.0001, 0.005, 0.0051, 0.2, 0.25, 0.9, 3.0, 29.9, 30.0, 45.0, 0.0]
LABELS = [("/a", "GET", 200), ("/a", "GET", 404), ("/b/<x>", "POST", 202)]


def _pair() -> tuple[CollectorRegistry, RequestMetrics, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram("probe_seconds", "probe", ["route", "method", "status"],
                          buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    gauge = Gauge("probe_in_flight", "probe", registry=registry)
    return registry, RequestMetrics(histogram, gauge), histogram


def test_folded_observations_expose_exactly_what_observe_would():
    folded_registry, requests, _ = _pair()
    direct_registry = CollectorRegistry()
    direct = Histogram("probe_seconds", "probe", ["route", "method", "status"],
                       buckets=LATENCY_BUCKETS, registry=direct_registry)  # fmt: skip
    for index, seconds in enumerate(DURATIONS * 3):
        route, method, status = LABELS[index % len(LABELS)]
        requests.started()
        requests.finished(route, method, status, seconds)
        direct.labels(route, method, str(status)).observe(seconds)
    requests.flush()
    folded = {k: v for k, v in samples(generate_latest(folded_registry).decode()).items()
              if k[0].startswith("probe_seconds") and not k[0].endswith("_created")}  # fmt: skip
    expected = samples(generate_latest(direct_registry).decode())
    expected = {
        k: v
        for k, v in expected.items()
        if k[0].startswith("probe_seconds") and not k[0].endswith("_created")
    }
    assert folded.keys() == expected.keys()
    for key, number in expected.items():
        assert abs(folded[key] - number) < 1e-9, key


def test_nothing_is_lost_between_threads_and_concurrent_flushes():
    registry, requests, _ = _pair()
    per_thread, threads = 3000, 8

    def serve() -> None:
        for _ in range(per_thread):
            requests.started()
            requests.finished("/a", "GET", 200, 0.001)

    def keep_flushing(stop: threading.Event) -> None:
        while not stop.is_set():
            requests.flush()

    stop = threading.Event()
    flusher = threading.Thread(target=keep_flushing, args=(stop,))
    flusher.start()
    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    flusher.join()
    requests.flush()
    text = generate_latest(registry).decode()
    labels = {"route": "/a", "method": "GET", "status": "200"}
    assert value(text, "probe_seconds_count", **labels) == per_thread * threads
    assert value(text, "probe_in_flight") == 0


def test_the_background_flush_folds_without_a_scrape():
    registry, requests, _ = _pair()
    requests.started()  # starts the process's flusher
    requests.started()
    requests.finished("/a", "GET", 200, 0.01)
    labels = {"route": "/a", "method": "GET", "status": "200"}
    deadline = time.monotonic() + 10 * metrics.FLUSH_SECONDS
    while time.monotonic() < deadline:
        text = generate_latest(registry).decode()
        if ("probe_seconds_count", frozenset(labels.items())) in samples(text):
            break
        time.sleep(0.05)
    assert value(text, "probe_seconds_count", **labels) == 1
    # The one request still inside the app is in flight.
    assert value(text, "probe_in_flight") == 1
    requests.finished("/a", "GET", 200, 0.01)
    requests.flush()
    assert value(generate_latest(registry).decode(), "probe_in_flight") == 0


def test_a_scrape_counts_every_request_before_it(client):
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    before = scrape(client)
    for _ in range(25):
        assert client.get("/healthz").status_code == 200
    for _ in range(5):
        assert client.get("/api/v1/tasks/not-a-uuid").status_code == 401
    after = scrape(client)  # no wait: the scrape folds its own process's requests first
    name = "conveyor_http_request_duration_seconds"
    assert value(after, f"{name}_count", **labels) - value(before, f"{name}_count", **labels) == 25
    inf = {**labels, "le": "+Inf"}
    assert value(after, f"{name}_bucket", **inf) - value(before, f"{name}_bucket", **inf) == 25
    assert value(after, f"{name}_sum", **labels) > value(before, f"{name}_sum", **labels)
    polls = {"route": "/api/v1/tasks/<task_id>", "method": "GET", "status": "401"}
    assert value(after, f"{name}_count", **polls) - value(before, f"{name}_count", **polls) == 5
    # The scrape itself is in flight while it is answered.
    assert value(after, "conveyor_http_requests_in_flight") >= 1

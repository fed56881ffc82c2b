"""Prometheus metrics: the API's /metrics, the workers' task metrics and exporter, the canary."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from prometheus_client import REGISTRY, generate_latest

from api.metrics import QueueDepthCollector
from infra.broker.depth import RedisQueueDepths
from infra.settings import ROOT, Settings
from shared.resources import AUTOCOMMIT_POOL_SIZE
from tests.support.apps import app_with
from tests.support.environment import process_environment
from tests.support.metrics import samples, scrape, scrape_headers, value
from tests.support.polling import wait_for_state
from tests.support.processes import free_port
from workers.observability import start_metrics_server


def test_http_metrics_move_with_traffic(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    client.get("/no-such-page")
    after = scrape(client)
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    assert (
        value(after, "conveyor_http_request_duration_seconds_count", **labels)
        - value(before, "conveyor_http_request_duration_seconds_count", **labels)
        == 3
    )
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(after, "conveyor_http_request_duration_seconds_count", **unmatched) >= 1
    # Scrapes are not requests worth a latency series.
    assert (
        value(
            after,
            "conveyor_http_request_duration_seconds_count",
            route="/metrics",
            method="GET",
            status="200",
        )
        == 0
    )
    assert ("conveyor_http_requests_in_flight", frozenset()) in samples(after)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic dGVzdC1tZXRyaWNzLXRva2Vu", "Bearer", "test-metrics-token"],
)
def test_metrics_without_the_scrape_token_are_refused(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "conveyor_" not in response.get_data(as_text=True)


def test_metrics_with_the_scrape_token_are_served(client):
    response = client.get("/metrics", headers=scrape_headers())
    assert response.status_code == 200
    assert "conveyor_http_requests_in_flight" in response.get_data(as_text=True)


def test_without_a_configured_token_nobody_can_scrape(settings):
    with app_with(settings, metrics_token="") as app:
        for headers in ({}, {"Authorization": "Bearer "}, scrape_headers()):
            response = app.test_client().get("/metrics", headers=headers)
            assert response.status_code == 401
            assert "METRICS_TOKEN" in response.get_json()["error"]["message"]


def test_the_worker_exporter_listens_on_loopback_unless_told_otherwise(worker, celery_app):
    port = free_port()
    server = start_metrics_server(port)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    assert Settings.from_env({}).worker_metrics_host == "127.0.0.1"
    assert Settings.from_env({"WORKER_METRICS_HOST": "0.0.0.0"}).worker_metrics_host == "0.0.0.0"


def test_jobs_accepted_counts_new_jobs_not_replays(client, make_user):
    _user_id, headers = make_user("metrics")
    before = value(scrape(client), "conveyor_jobs_accepted_total", kind="ledger.transaction")
    body = {"type": "credit", "amount": 5, "description": "metric"}
    keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    assert client.post("/api/v1/transactions", json=body, headers=keyed).status_code == 202
    replay = client.post("/api/v1/transactions", json=body, headers=keyed)
    assert replay.headers["Idempotent-Replayed"] == "true"
    after = value(scrape(client), "conveyor_jobs_accepted_total", kind="ledger.transaction")
    assert after - before == 1


def test_queue_depth_pool_and_cache_metrics(client, resources, redis_client):
    text = scrape(client)
    for queue in ("ledger", "ai", "maintenance"):
        assert ("conveyor_queue_depth", frozenset({("queue", queue)})) in samples(text)
    assert value(text, "conveyor_broker_up") == 1
    for pool, size in (("main", 10), ("autocommit", AUTOCOMMIT_POOL_SIZE)):
        assert value(text, "conveyor_db_pool_size", pool=pool) == size
        assert ("conveyor_db_pool_checked_out", frozenset({("pool", pool)})) in samples(text)
        assert ("conveyor_db_pool_overflow", frozenset({("pool", pool)})) in samples(text)

    # The cache layer's shared counters surface as Prometheus counters.
    stats_key = f"{resources.keys.prefix}cache:stats"
    redis_client.hincrby(stats_key, "metrics-probe:hits", 3)
    redis_client.hincrby(stats_key, "metrics-probe:misses", 1)
    text = scrape(client)
    assert value(text, "conveyor_cache_hits_total", cache="metrics-probe") == 3
    assert value(text, "conveyor_cache_misses_total", cache="metrics-probe") == 1


def test_queue_depth_is_read_from_redis_at_scrape_time(resources, redis_client):
    queue = f"depth-probe-{uuid.uuid4().hex[:8]}"
    collector = QueueDepthCollector(
        RedisQueueDepths(resources.redis, resources.keys.prefix), [queue]
    )

    def depth() -> float:
        (family, _up) = list(collector.collect())
        return family.samples[0].value

    assert depth() == 0
    redis_client.rpush(f"{resources.keys.prefix}{queue}", "a", "b", "c")
    assert depth() == 3


def test_task_metrics_from_a_real_worker(client, make_user, worker):
    _user_id, headers = make_user("taskm")
    task = "ledger.transaction"
    before = generate_latest(REGISTRY).decode()
    response = client.post(
        "/api/v1/transactions",
        json={"type": "credit", "amount": 7, "description": "task metrics"},
        headers=headers,
    )
    assert wait_for_state(client, headers, response.get_json()["task_id"])["state"] == "SUCCESS"
    # Celery signals a success, then the run's end (which times it), after the
    # task wrote its SUCCESS document, which a poll can read first: wait for both.
    deadline = time.monotonic() + 10
    while True:
        after = generate_latest(REGISTRY).decode()
        timed = value(after, "conveyor_task_runtime_seconds_count", task=task)
        if timed > value(before, "conveyor_task_runtime_seconds_count", task=task):
            break
        if time.monotonic() > deadline:
            break  # the assertions below say what did not move
        time.sleep(0.05)

    def moved(name: str) -> float:
        return value(after, name, task=task) - value(before, name, task=task)

    assert moved("conveyor_task_started_total") >= 1
    assert moved("conveyor_task_succeeded_total") >= 1
    assert moved("conveyor_task_runtime_seconds_count") >= 1
    # The web process stamps the publish time; the worker measures the wait from it.
    assert moved("conveyor_task_queue_wait_seconds_count") >= 1
    assert moved("conveyor_task_failed_total") == 0


def test_worker_exporter_serves_task_metrics(worker, celery_app):
    port = free_port()
    server = start_metrics_server(port)
    try:
        celery_app.send_task("system.ping", queue="maintenance").get(timeout=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert value(text, "conveyor_task_succeeded_total", task="system.ping") >= 1


def _worker_health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.worker_health", *args],
        cwd=ROOT,
        env=process_environment(),  # the test run's Redis and key prefix
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_health_passes_when_a_worker_consumes_the_queue(worker):
    result = _worker_health("--queue", "ledger", "--timeout", "15")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_worker_health_fails_when_nobody_consumes_the_queue(worker):
    result = _worker_health("--queue", f"nobody-{uuid.uuid4().hex[:6]}", "--timeout", "1")
    assert result.returncode == 1
    assert "unhealthy" in result.stderr

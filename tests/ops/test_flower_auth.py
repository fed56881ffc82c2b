"""Flower, started the way the Procfile does, is behind basic auth (UI, API and /metrics)."""

from __future__ import annotations

import base64
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.environment import process_environment
from tests.support.processes import free_port, running_server

CREDENTIALS = "ops:flower-test-password"
SCRAPE_TOKEN = "flower-test-scrape-token"


def _get(port: int, path: str, credentials: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if credentials:
        token = base64.b64encode(credentials.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def flower(settings, tmp_path_factory):
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
            f"--port={port}", "--address=127.0.0.1"]  # fmt: skip
    env = {**process_environment(), "FLOWER_BASIC_AUTH": CREDENTIALS, "METRICS_TOKEN": SCRAPE_TOKEN}
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    with running_server(argv, env=env, log_path=log_path, port=port):
        yield port


# /metrics: Flower 2.2 serves it without asking (tuning/flower_metrics_auth.py repairs that).
@pytest.mark.parametrize("path", ["/", "/tasks", "/api/workers", "/api/tasks", "/metrics"])
def test_flower_requires_basic_auth(flower, path):
    assert _get(flower, path) == 401
    assert _get(flower, path, "ops:wrong-password") == 401
    assert _get(flower, path, CREDENTIALS) == 200


def test_flower_healthcheck_is_open_for_probes(flower):
    assert _get(flower, "/healthcheck") == 200


def _bearer(port: int, path: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_flower_metrics_are_served_to_prometheus_with_the_scrape_token(flower):
    status, text = _bearer(flower, "/metrics", SCRAPE_TOKEN)
    assert status == 200
    assert "# TYPE flower_events_total counter" in text
    assert _bearer(flower, "/metrics", "not-the-token")[0] == 401


@pytest.mark.parametrize("path", ["/", "/api/workers", "/api/tasks"])
def test_the_scrape_token_opens_nothing_else_of_flower(flower, path):
    assert _bearer(flower, path, SCRAPE_TOKEN)[0] == 401

"""Flower, started the way the Procfile does, is behind basic auth (UI and API)."""

from __future__ import annotations

import base64
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.environment import process_environment
from tests.support.processes import free_port, running_server

CREDENTIALS = "ops:flower-test-password"


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
    env = {**process_environment(), "FLOWER_BASIC_AUTH": CREDENTIALS}
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    with running_server(argv, env=env, log_path=log_path, port=port):
        yield port


@pytest.mark.parametrize("path", ["/", "/tasks", "/api/workers", "/api/tasks"])
def test_flower_requires_basic_auth(flower, path):
    assert _get(flower, path) == 401
    assert _get(flower, path, "ops:wrong-password") == 401
    assert _get(flower, path, CREDENTIALS) == 200


def test_flower_healthcheck_is_open_for_probes(flower):
    assert _get(flower, "/healthcheck") == 200

"""The Python client and the `conveyor` CLI against a real gunicorn web and a real prefork worker.

The CLI runs as the installed console script in a subprocess; its login lives
in a private config directory (XDG_CONFIG_HOME) so nothing of the user's is read.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from client import ConveyorClient
from tests.support.accounts import PASSWORD, fund
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


@pytest.fixture
def server(served):
    return served


class Recording(httpx.BaseTransport):
    """The real network, with every request's method and path noted."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return self.inner.handle_request(request)


def _user(server) -> tuple[int, str]:
    with ConveyorClient(server.url) as api:
        name = f"cli_{uuid.uuid4().hex[:8]}"
        created = api.register(name, PASSWORD)
        return created["id"], api.login(name, PASSWORD)["access_token"]


@pytest.mark.parametrize("where", ["events", "web"])
def test_wait_returns_the_result_by_stream(server, where):
    """From the events process (held open), or from web (replay and close, then reconnect)."""
    _, token = _user(server)
    transport = Recording()
    events_url = server.events_url if where == "events" else server.url
    with ConveyorClient(server.url, token, events_url=events_url, transport=transport) as api:
        task_id = api.submit("random", {"count": 3})["task_id"]
        seen_progress: list[int] = []
        final = api.wait(
            task_id, timeout=60, on_update=lambda s: seen_progress.append(s["progress"])
        )
    assert final["state"] == "SUCCESS" and final["result"]["count"] == 3
    streams = [path for method, path in transport.seen if path.endswith("/events")]
    polls = [path for method, path in transport.seen if path == f"/api/v1/tasks/{task_id}"]
    assert streams and len(polls) == 1  # followed by the stream; one read of the stored result
    assert seen_progress[-1] == 100


def test_wait_polls_with_the_servers_hint_when_streams_are_unavailable(server):
    _, token = _user(server)
    transport = Recording()
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: no event streams here
    with ConveyorClient(server.url, token, events_url=nowhere, transport=transport) as api:
        task_id = api.submit("transaction", {"type": "credit", "amount": 250})["task_id"]
        final = api.wait(task_id, timeout=60)
    assert final["state"] == "SUCCESS" and final["result"]["balance"] == 250
    assert ("GET", f"/api/v1/tasks/{task_id}/events") in transport.seen
    assert transport.seen.count(("GET", f"/api/v1/tasks/{task_id}")) >= 1


class FlakyOnce(Recording):
    """Answers the first POST 503 and loses the response of the second (after the server had it)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or "/auth/" in request.url.path:
            return super().handle_request(request)
        self.keys.append(request.headers.get("Idempotency-Key"))
        if len(self.keys) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {}})
        response = super().handle_request(request)
        if len(self.keys) == 2:
            response.read()
            raise httpx.ReadError("connection lost before the answer arrived")
        return response


def test_submit_retries_with_one_idempotency_key_and_creates_one_job(server):
    _, token = _user(server)
    transport = FlakyOnce()
    with ConveyorClient(server.url, token, transport=transport, sleep=lambda _s: None) as api:
        accepted = api.submit("transaction", {"type": "credit", "amount": 40})
        listing = api.jobs()
    assert len(transport.keys) == 3 and len(set(transport.keys)) == 1 and transport.keys[0]
    assert [item["task_id"] for item in listing["items"]] == [accepted["task_id"]]


def _cli(server, *args: str, token: str | None, config_home: Path, timeout: float = 90):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        {
            "CONVEYOR_URL": server.url,
            "CONVEYOR_EVENTS_URL": server.events_url,
            "XDG_CONFIG_HOME": str(config_home),
        }
    )
    if token:
        env["CONVEYOR_TOKEN"] = token
    return subprocess.run(
        [CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_submit_wait_exits_zero_with_the_result_as_json(server, tmp_path):
    _, token = _user(server)
    done = _cli(
        server, "submit", "transaction", "--type", "credit", "--amount", "500", "--wait", "--json",
        token=token, config_home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "SUCCESS" and status["result"]["balance"] == 500
    ai = _cli(
        server, "submit", "ai", "--kind", "presentation", "--prompt", "Ship it", "--option",
        "num_cards=3", "--wait", "--json", token=token, config_home=tmp_path,
    )  # fmt: skip
    assert ai.returncode == 0, ai.stderr
    cards = json.loads(ai.stdout)["result"]["cards"]
    assert len(cards) == 3


def test_cli_exits_non_zero_on_failure_and_on_cancelled(server, tmp_path):
    user_id, token = _user(server)
    failed = _cli(
        server, "submit", "transaction", "--type", "debit", "--amount", "900", "--wait", "--json",
        token=token, config_home=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["error"]["code"] == "insufficient_funds"
    fund(server.resources, user_id, 10)
    finished = json.loads(failed.stdout)["task_id"]
    refused = _cli(server, "cancel", finished, token=token, config_home=tmp_path)
    assert refused.returncode == 5 and "already_finished" in refused.stderr


def test_cli_login_saves_a_private_token_that_later_commands_use(server, tmp_path):
    name = f"login_{uuid.uuid4().hex[:8]}"
    login = _cli(
        server, "login", "--register", "--username", name, "--password", PASSWORD,
        token=None, config_home=tmp_path,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    saved = tmp_path / "conveyor" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["url"] == server.url
    submitted = _cli(
        server, "submit", "random", "--count", "2", "--json", token=None, config_home=tmp_path
    )
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["task_id"]
    watched = _cli(server, "watch", task_id, "--json", token=None, config_home=tmp_path)
    assert watched.returncode == 0 and json.loads(watched.stdout)["result"]["count"] == 2
    listed = _cli(server, "jobs", "--json", token=None, config_home=tmp_path)
    assert [item["task_id"] for item in json.loads(listed.stdout)["items"]] == [task_id]
    nobody = _cli(server, "jobs", token=None, config_home=tmp_path / "empty")
    assert nobody.returncode == 5 and "not logged in" in nobody.stderr

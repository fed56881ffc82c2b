"""Event streams on `web` itself (gunicorn's gevent worker, as the Procfile runs it): held live.

A stream that reaches `web` waits on its job's own log (api/held_streams.py):
the terminal state a worker writes reaches the open stream, which then ends;
after WEB_STREAM_HOLD_SECONDS it closes and a reconnect resumes after its last
id; past WEB_STREAMS_HELD_MAX streams replay and close. The status writes are
the worker's own call (`StatusStore.write`) on rows recorded through the
domain, so each test decides when a job moves, and asserts what the open
stream saw in which order.
"""

from __future__ import annotations

import http.client
import signal
import sys
import threading
import uuid
from pathlib import Path

import pytest

from shared.jobs import create_job, isoformat, utcnow
from tests.support.accounts import register_and_login
from tests.support.events import read_events
from tests.support.processes import free_port, running_server
from tests.support.stacks import private_stack

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HOLD_SECONDS = 10
HELD_MAX = 100


@pytest.fixture(scope="module")
def web(settings, redis_client, tmp_path_factory):
    """A private stack's gunicorn web: one gevent worker (one gate of 64), 100 held streams."""
    log_dir = tmp_path_factory.mktemp("held")
    changes = {"web_stream_hold_seconds": float(HOLD_SECONDS), "web_streams_held_max": HELD_MAX}
    with private_stack(settings, redis_client, log_dir, **changes) as stack:
        port = free_port()
        env = {**stack.env, "PORT": str(port), "WEB_CONCURRENCY": "1"}
        env["GUNICORN_CMD_ARGS"] = "--graceful-timeout 3"
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
        with running_server(argv, env=env, log_path=log_dir / "web.log", port=port):
            stack.port = port  # type: ignore[attr-defined]
            yield stack


@pytest.fixture
def owner(web):
    return register_and_login(web.client, f"held_{uuid.uuid4().hex[:10]}")


def _started_job(web, owner_id: int) -> dict:
    """A job row and its STARTED document and event, as a worker's claim leaves them."""
    with web.resources.autocommit_engine.connect() as conn:
        submission = create_job(
            conn, owner_id=owner_id, kind="ledger.random", params={"count": 1}, ttl_seconds=3600
        )
    status = {**submission.status, "state": "STARTED", "message": "started"}
    web.resources.statuses.write(owner_id, status)
    return status


def _finish(web, owner_id: int, status: dict) -> None:
    """The worker's terminal write: the SUCCESS document and its event."""
    done = {**status, "state": "SUCCESS", "progress": 100, "message": "done",
            "result": {"count": 1}, "updated_at": isoformat(utcnow())}  # fmt: skip
    assert web.resources.statuses.write(owner_id, done)


class OpenStream:
    """One stream read line by line from a raw connection, so a test can act between events."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HOLD_SECONDS * 3)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.retry: int | None = None

    def next_event(self) -> tuple[str | None, str, str] | None:
        """The next event (id, type, state), or None when the server ended the stream."""
        import json

        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if text.startswith(":"):
                continue
            if text:
                name, _, value = text.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "retry" in fields:
                self.retry = int(fields.pop("retry"))
            if "data" in fields:
                data = json.loads(fields["data"])
                return fields.get("id"), fields.get("event", "message"), data["state"]

    def close(self) -> None:
        self.conn.close()


def test_a_stream_on_web_sees_the_terminal_state_live_then_ends(web, owner):
    owner_id, headers = owner
    status = _started_job(web, owner_id)
    stream = OpenStream(web.port, f"/api/v1/tasks/{status['task_id']}/events", headers)
    assert stream.response.status == 200
    first = stream.next_event()
    assert first is not None and first[2] == "STARTED"
    assert stream.retry == 250  # a held stream: reconnect at once after its hold
    # The stream is open and the job unfinished; now the worker writes its end.
    _finish(web, owner_id, status)
    last = stream.next_event()
    assert last is not None and last[1:] == ("state", "SUCCESS")
    assert stream.next_event() is None  # ended by the server after the terminal event
    stream.close()


def test_a_held_stream_closes_after_its_hold_and_resumes_after_its_last_id(web, owner):
    owner_id, headers = owner
    status = _started_job(web, owner_id)
    path = f"/api/v1/tasks/{status['task_id']}/events"
    stream = OpenStream(web.port, path, headers)
    first = stream.next_event()
    assert first is not None and first[2] == "STARTED"
    assert stream.next_event() is None  # the hold ran out with the job still running
    stream.close()
    web.resources.statuses.progress(owner_id, status, 50, "half way")
    _finish(web, owner_id, status)
    resumed = read_events(
        http.client.HTTPConnection("127.0.0.1", web.port, timeout=30),
        path,
        {**headers, "Last-Event-ID": first[0]},
    )
    assert resumed.states == ["PROGRESS", "SUCCESS"] and resumed.ended


def test_held_streams_leave_the_request_gate_to_polls_and_the_next_one_replays(web, owner):
    """More held streams than the gate's 64 slots: polls still answer while every one is open."""
    owner_id, headers = owner
    jobs = [_started_job(web, owner_id) for _ in range(HELD_MAX)]
    opened = threading.Semaphore(0)
    order: list[str] = []
    streams: list[OpenStream] = []
    lock = threading.Lock()

    def hold(status: dict) -> None:
        stream = OpenStream(web.port, f"/api/v1/tasks/{status['task_id']}/events", headers)
        with lock:
            streams.append(stream)
        first = stream.next_event()
        opened.release()
        last = stream.next_event()
        ended = stream.next_event() is None
        with lock:
            order.append(f"{first and first[2]} {last and last[2]} ended={ended}")

    threads = [threading.Thread(target=hold, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for _ in jobs:  # every stream answered its replay and is held (a slot each)
        assert opened.acquire(timeout=HOLD_SECONDS)
    poll = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    for job in jobs[:20]:
        poll.request("GET", f"/api/v1/tasks/{job['task_id']}", headers=headers)
        answer = poll.getresponse()
        assert answer.status == 200 and b'"STARTED"' in answer.read()
        with lock:
            order.append("poll answered")
    # The hundred-and-first: no slot left, so it replays and closes (and says 2 s).
    extra = OpenStream(web.port, f"/api/v1/tasks/{jobs[0]['task_id']}/events", headers)
    assert extra.next_event() is not None and extra.next_event() is None
    assert extra.retry == 2000
    extra.close()
    with lock:
        order.append("extra replayed and closed")
    for job in jobs:  # the workers' terminal writes end every held stream
        _finish(web, owner_id, job)
    for thread in threads:
        thread.join(timeout=HOLD_SECONDS * 3)
    assert order[:21] == ["poll answered"] * 20 + ["extra replayed and closed"]
    assert order[21:] == ["STARTED SUCCESS ended=True"] * HELD_MAX
    for stream in streams:
        stream.close()
    # Their slots came back: a new stream is held again.
    status = _started_job(web, owner_id)
    again = OpenStream(web.port, f"/api/v1/tasks/{status['task_id']}/events", headers)
    assert again.next_event() is not None and again.retry == 250
    again.close()


def test_a_stopping_web_lets_its_held_streams_go_instead_of_waiting_them_out(web, owner, tmp_path):
    """SIGTERM (a deploy, Ctrl-C under make run): held streams end, the graceful stop is prompt."""
    owner_id, headers = owner
    status = _started_job(web, owner_id)
    port = free_port()
    env = {**web.env, "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_STREAM_HOLD_SECONDS": "600"}
    # Far longer than the stream's read timeout: only letting go can end it in time.
    env["GUNICORN_CMD_ARGS"] = "--graceful-timeout 600"
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
    log = tmp_path / "stopping-web.log"
    with running_server(argv, env=env, log_path=log, port=port) as server:
        stream = OpenStream(port, f"/api/v1/tasks/{status['task_id']}/events", headers)
        first = stream.next_event()
        assert first is not None and first[2] == "STARTED" and stream.retry == 250
        server.send_signal(signal.SIGTERM)
        assert stream.next_event() is None  # let go: the server ended it, cleanly
        stream.close()
        assert server.wait(timeout=HOLD_SECONDS * 3) == 0  # and nothing else kept it
    assert "graceful timeout" not in log.read_text()

"""The `events` process as the Procfile runs it, and a blocking Server-Sent Events reader."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from honcho.environ import parse_procfile

from infra.settings import ROOT
from tests.support.processes import free_port, running_server


@dataclass
class EventsServer:
    port: int
    log_path: Path
    process: subprocess.Popen

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@contextmanager
def running_events(
    env: Mapping[str, str], log_path: Path, **overrides: str
) -> Iterator[EventsServer]:
    """The Procfile's `events` line under /bin/sh, on a free port; stopped by its PID."""
    command = parse_procfile((ROOT / "Procfile").read_text()).processes["events"]
    port = free_port()
    # The Procfile names bare `gunicorn`: the venv's, as under `make run`.
    path = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env = {**env, "PATH": path, "EVENTS_PORT": str(port), **overrides}
    argv = ["/bin/sh", "-c", command]
    with running_server(argv, env=env, log_path=log_path, port=port, ready_path="/healthz") as proc:
        yield EventsServer(port, log_path, proc)


@dataclass
class Received:
    """A stream's answer: status, headers, events (id, type, data) and whether it ended."""

    status: int
    headers: dict[str, str]
    events: list[tuple[str | None, str, dict]]
    ended: bool
    comments: int = 0

    @property
    def states(self) -> list[str]:
        return [data["state"] for _id, kind, data in self.events if kind != "notification"]

    @property
    def ids(self) -> list[str | None]:
        return [event_id for event_id, _kind, _data in self.events]


def read_events(
    conn: http.client.HTTPConnection,
    path: str,
    headers: Mapping[str, str],
    *,
    stop_after: int | None = None,
    bound: float = 30.0,
    answered: threading.Event | None = None,
) -> Received:
    """GET `path` and read events until the server ends the stream (or `stop_after` events).

    `answered` is set once the response's status line and headers have arrived.
    """
    conn.request("GET", path, headers=dict(headers))
    response = conn.getresponse()
    if answered is not None:
        answered.set()
    received = Received(response.status, dict(response.getheaders()), [], False)
    if response.status != 200:
        body = response.read()
        received.events = [(None, "body", json.loads(body) if body else {})]
        received.ended = True
        return received
    deadline = time.monotonic() + bound
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        line = response.readline()
        if not line:
            received.ended = True
            break
        text = line.decode().rstrip("\r\n")
        if text.startswith(":"):
            received.comments += 1
        elif text:
            name, _, value = text.partition(":")
            fields[name] = value.removeprefix(" ")
        else:
            if "data" in fields:
                received.events.append(
                    (fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
                )
                if stop_after is not None and len(received.events) >= stop_after:
                    break
            fields = {}
    else:
        raise AssertionError(f"stream {path} still open after {bound:.0f}s: {received.events}")
    conn.close()
    return received

"""Server subprocesses for tests: free loopback ports, started and stopped by PID."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from infra.settings import ROOT


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    start_timeout: float = 90.0,
    ready_path: str | None = None,
) -> Iterator[subprocess.Popen]:
    """A server subprocess, its output in `log_path`, stopped by its PID on exit.

    With `port`, waits until the port accepts connections (failing with the
    log's tail if the process dies first), and with `ready_path` too until a
    GET of it answers 200: gunicorn's arbiter listens before its workers have
    loaded the app, and on a busy machine that takes seconds. Output goes to a
    file, not a pipe, so a talkative server can never block on a full pipe
    nobody reads.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + start_timeout
            while port is not None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    tail = log_path.read_text()[-2000:]
                    assert process.poll() is None, f"{argv[:4]} exited:\n{tail}"
                    assert time.monotonic() < deadline, f"{argv[:4]} did not listen:\n{tail}"
                    time.sleep(0.1)
            while port is not None and ready_path is not None:
                if _answers_200(port, ready_path):
                    break
                tail = log_path.read_text()[-2000:]
                assert process.poll() is None, f"{argv[:4]} exited:\n{tail}"
                assert time.monotonic() < deadline, f"{argv[:4]} never answered:\n{tail}"
                time.sleep(0.1)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _answers_200(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()

"""gunicorn responses in one write (tuning/gunicorn_one_write.py): the same bytes, fewer sends."""

from __future__ import annotations

import gc
import http.client
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from gunicorn import util as gunicorn_util
from gunicorn.config import Config
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http.parser import RequestParser

from tests.support.environment import process_environment, tuning_on
from tests.support.processes import free_port, running_server
from tuning.gunicorn_one_write import install as send_head_with_body

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"status":"ok"}\n'


class _Socket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    # The Date header is the one part of a head that changes from call to call.
    monkeypatch.setattr(gunicorn_util, "http_date", lambda *_: "Tue, 01 Dec 2026 00:00:00 GMT")


def _exchange(write, wire: bytes, headers: list, writes: list[bytes]) -> list[bytes]:
    """What a response sends through `write`: each sendall, in order."""
    cfg = Config()
    sock = _Socket()
    request = next(RequestParser(cfg, iter([wire]), ("127.0.0.1", 5555)))
    response, _environ = gunicorn_wsgi.create(request, sock, ("127.0.0.1", 5555), "x", cfg)
    response.start_response("200 OK", list(headers))
    for data in writes:
        write(response, data)
    response.close()
    return sock.sends


def _both(wire: bytes, headers: list, writes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    assert send_head_with_body()
    patched = gunicorn_wsgi.Response.write
    original = patched._conveyor_original
    return _exchange(original, wire, headers, writes), _exchange(patched, wire, headers, writes)


GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SIZED = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def test_a_sized_answer_goes_out_in_one_send_with_the_same_bytes():
    original, patched = _both(GET, SIZED, [BODY])
    assert len(original) == 2  # gunicorn alone: the head, then the body
    assert patched == [b"".join(original)]
    assert patched[0].endswith(b"\r\n\r\n" + BODY)


def test_later_writes_and_chunked_bodies_go_out_as_before():
    half = len(BODY) // 2
    original, patched = _both(GET, SIZED, [BODY[:half], BODY[half:]])
    assert patched == [original[0] + original[1], original[2]]
    chunked = [("Content-Type", "application/json")]  # no length: HTTP/1.1 chunks it
    original, patched = _both(GET, chunked, [BODY])
    assert b"Transfer-Encoding: chunked" in original[0]
    assert patched == original


def test_a_head_request_sends_only_the_head():
    wire = b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    original, patched = _both(wire, SIZED, [BODY])
    assert original == patched and len(patched) == 1
    assert patched[0].endswith(b"\r\n\r\n")


def test_patching_twice_wraps_once():
    assert send_head_with_body() and send_head_with_body()
    inner = gunicorn_wsgi.Response.write._conveyor_original
    assert not hasattr(inner, "_conveyor_original")


def test_every_gunicorn_worker_applies_it():
    spec = importlib.util.spec_from_file_location(
        "conveyor_gunicorn_conf", ROOT / "gunicorn.conf.py"
    )
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    gunicorn_wsgi.Response.write = getattr(
        gunicorn_wsgi.Response.write, "_conveyor_original", gunicorn_wsgi.Response.write
    )
    threshold = gc.get_threshold()
    try:
        conf.post_worker_init(types.SimpleNamespace())  # not monkey-patched: the gthread path
    finally:  # it also tunes the collector (tuning/collector.py), for a worker's life
        gc.unfreeze()
        gc.set_threshold(*threshold)
    # With CONVEYOR_TUNING=off the worker keeps gunicorn's own write.
    assert hasattr(gunicorn_wsgi.Response.write, "_conveyor_original") == tuning_on(
        "gunicorn_one_write"
    )


def test_the_web_answers_whole_through_gunicorn(tmp_path):
    """The Procfile's web (gevent) serves complete answers, keep-alive, with the patch on."""
    port = free_port()
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "1"}
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "api.wsgi:app"]  # fmt: skip
    with running_server(
        argv, env=env, log_path=tmp_path / "web.log", port=port, ready_path="/healthz"
    ):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):  # one connection, kept alive
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            assert answer.status == 200
            assert answer.read() == BODY
            assert answer.getheader("X-Request-ID")
        connection.request("HEAD", "/healthz")
        answer = connection.getresponse()
        assert answer.status == 200 and answer.read() == b""
        connection.close()

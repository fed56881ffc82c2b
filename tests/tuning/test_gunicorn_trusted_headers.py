"""Fixed response headers under gunicorn: checked once, then passed as they are (only they).

tuning/gunicorn_trusted_headers.py; the real-gunicorn tests hold with the adjustment on or off.
"""

from __future__ import annotations

import http.client
import secrets
import sys
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http.errors import InvalidResponseHeader, InvalidResponseHeaderName
from gunicorn.http.parser import RequestParser

from api import observability
from api.hardening import response_defaults
from tests.support.environment import process_environment, tuning_on
from tests.support.processes import free_port, running_server
from tuning import gunicorn_trusted_headers

DEFAULTS = response_defaults(production=True)


class _Socket:
    def sendall(self, data: bytes) -> None:
        self.sent = getattr(self, "sent", b"") + data


def _response() -> gunicorn_wsgi.Response:
    cfg = Config()
    wire = [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
    request = next(RequestParser(cfg, iter(wire), ("127.0.0.1", 5555)))
    response, _environ = gunicorn_wsgi.create(request, _Socket(), ("127.0.0.1", 5555), "x", cfg)
    return response


def _original(response: gunicorn_wsgi.Response, headers: list) -> None:
    process = gunicorn_wsgi.Response.process_headers
    getattr(process, "_conveyor_original", process)(response, headers)


@pytest.fixture(scope="module")
def trusted() -> Iterator[list[tuple[str, str]]]:
    gunicorn_trusted_headers.install()  # the adjustment itself is under test here
    yield gunicorn_trusted_headers.trust([(name, value) for name, value in DEFAULTS.items()])
    if not tuning_on("gunicorn_trusted_headers"):
        gunicorn_trusted_headers.uninstall()


class _CountingPattern:
    def __init__(self, pattern) -> None:
        self.pattern, self.calls = pattern, 0

    def fullmatch(self, text: str):
        self.calls += 1
        return self.pattern.fullmatch(text)


def test_every_fixed_header_is_trusted_and_gunicorn_is_patched(trusted):
    assert trusted == list(DEFAULTS.items())
    assert hasattr(gunicorn_wsgi.Response.process_headers, "_conveyor_original")


def test_a_trusted_tail_skips_gunicorns_checks(trusted, monkeypatch):
    counting = _CountingPattern(gunicorn_wsgi.TOKEN_RE)
    monkeypatch.setattr(gunicorn_wsgi, "TOKEN_RE", counting)
    response = _response()
    own = [("Content-Type", "application/json"), ("Content-Length", "16")]
    response.start_response("200 OK", [*own, *trusted])
    assert counting.calls == len(own)  # the response's own headers only
    assert response.headers == [*own, *trusted]
    assert response.response_length == 16


def test_only_those_objects_are_trusted_not_equal_values(trusted, monkeypatch):
    counting = _CountingPattern(gunicorn_wsgi.TOKEN_RE)
    monkeypatch.setattr(gunicorn_wsgi, "TOKEN_RE", counting)
    copies = [(str(name), str(value)) for name, value in DEFAULTS.items()]
    copies = [(name[:1] + name[1:], value[:1] + value[1:]) for name, value in copies]
    assert all(copy is not pair for copy, pair in zip(copies, trusted, strict=True))
    _response().start_response("200 OK", copies)
    assert counting.calls == len(copies)


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Type", "text/plain"), ("Content-Length", "3")],
        [("Content-Length", "3"), ("Connection", "close"), ("X-A", " padded\t")],
        [("Upgrade", "websocket"), ("Connection", "Upgrade")],
        [("Vary", "Origin"), ("Cache-Control", "no-cache")],
    ],
)
def test_headers_come_out_as_gunicorn_alone_would_have_them(trusted, headers):
    for tail in ([], list(trusted), [*trusted, ("Connection", "close")], trusted[3:]):
        patched, plain = _response(), _response()
        patched.process_headers([*headers, *tail])
        _original(plain, [*headers, *tail])
        assert patched.headers == plain.headers
        assert (patched.response_length, patched.upgrade) == (plain.response_length, plain.upgrade)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (("X-Bad", "a\r\nInjected: yes"), InvalidResponseHeader),
        (("Bad Name", "x"), InvalidResponseHeaderName),
        (("X-Bytes", b"x"), TypeError),
    ],
)
def test_a_bad_header_before_the_trusted_tail_is_still_refused(trusted, bad, error):
    with pytest.raises(error):
        _response().process_headers([bad, *trusted])


def test_what_gunicorn_would_change_drop_or_refuse_is_never_trusted():
    refused = gunicorn_trusted_headers.trust(
        [
            ("Content-Length", "5"),  # gunicorn reads it
            ("Connection", "close"),  # hop-by-hop: gunicorn drops or acts on it
            ("Transfer-Encoding", "chunked"),
            ("X-Padded", " value "),  # stripped
            ("X-Bad", "a\r\nb"),  # refused
            ("Bad Name", "x"),
            ["X-List", "x"],  # not a tuple
        ]
    )
    assert refused == []


def test_the_leading_trace_id_skips_gunicorns_checks_and_comes_out_the_same(trusted, monkeypatch):
    from api.tracing import TRACE_ID

    assert gunicorn_trusted_headers.trust_leading(TRACE_ID)
    own = [("Content-Type", "application/json"), ("Content-Length", "16")]
    for value in ("0af7651916cd43dd8448eb211c80319c", "AbC123", "x" * 200):
        counting = _CountingPattern(gunicorn_wsgi.TOKEN_RE)
        monkeypatch.setattr(gunicorn_wsgi, "TOKEN_RE", counting)
        headers = [(TRACE_ID, value), *own, *trusted]
        patched, plain = _response(), _response()
        patched.process_headers(list(headers))
        monkeypatch.setattr(gunicorn_wsgi, "TOKEN_RE", counting.pattern)
        _original(plain, list(headers))
        assert counting.calls == len(own)  # neither the trace id nor the trusted tail
        assert patched.headers == plain.headers
        assert patched.response_length == plain.response_length == 16


@pytest.mark.parametrize(
    "value",
    ["a\r\nInjected: yes", " padded ", "with space", "dé", "", b"bytes"],
)
def test_a_leading_trace_id_that_is_not_letters_and_digits_is_checked(trusted, value):
    from api.tracing import TRACE_ID

    assert gunicorn_trusted_headers.trust_leading(TRACE_ID)
    patched, plain = _response(), _response()
    headers = [(TRACE_ID, value), ("Content-Length", "0"), *trusted]
    try:
        _original(plain, list(headers))
    except Exception as refused:  # gunicorn refuses it: so must the adjustment
        with pytest.raises(type(refused)):
            patched.process_headers(list(headers))
        return
    patched.process_headers(list(headers))
    assert patched.headers == plain.headers


def test_only_that_name_object_leads_unchecked(trusted, monkeypatch):
    from api.tracing import TRACE_ID

    assert gunicorn_trusted_headers.trust_leading(TRACE_ID)
    equal = "".join(["X-", "Trace-Id"])
    assert equal == TRACE_ID and equal is not TRACE_ID
    counting = _CountingPattern(gunicorn_wsgi.TOKEN_RE)
    monkeypatch.setattr(gunicorn_wsgi, "TOKEN_RE", counting)
    _response().process_headers([(equal, "abc123"), ("Content-Length", "0")])
    assert counting.calls == 2
    # Not leading: checked as any other header.
    counting.calls = 0
    _response().process_headers([("Content-Length", "0"), (TRACE_ID, "abc123")])
    assert counting.calls == 2


def test_a_name_gunicorn_would_read_or_drop_cannot_lead_unchecked():
    for name in ("Content-Length", "Connection", "Transfer-Encoding", "Bad Name"):
        assert not gunicorn_trusted_headers.trust_leading(name)


def test_the_app_trusts_its_fixed_headers_when_gunicorn_serves_it(settings):
    from api import create_app

    assert "gunicorn.http.wsgi" in sys.modules  # imported above, as a worker has before loading
    app = create_app(settings)
    try:
        hooks = app.extensions[observability.EXTENSION]
        assert hooks._default_pairs
        trusted = gunicorn_trusted_headers._TRUSTED
        assert all(trusted.get(id(pair)) is pair for pair in hooks._default_pairs)
    finally:
        app.extensions["conveyor"].close()


@pytest.fixture(scope="module")
def production_gunicorn(settings, tmp_path_factory):
    """gunicorn.conf.py as deployed (gevent), CONVEYOR_ENV=production, on a free loopback port."""
    port = free_port()
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "1"}
    env.update(CONVEYOR_ENV="production", SECRET_KEY=secrets.token_hex(32))
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "api.wsgi:app"]  # fmt: skip
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with running_server(argv, env=env, log_path=log_path, port=port, ready_path="/healthz"):
        yield port


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_every_fixed_header_goes_out_once_through_a_real_gunicorn(production_gunicorn):
    for path in ("/healthz", "/api/v1/nothing", "/api/v1/wallet"):
        response = _get(production_gunicorn, path, {"X-Request-ID": "fixed-1"})
        names = [name.lower() for name, _value in response.getheaders()]
        for name, value in DEFAULTS.items():
            assert response.getheader(name) == value, (path, name)
            assert names.count(name.lower()) == 1, (path, name)
        assert response.getheader("X-Request-ID") == "fixed-1"
        assert float(response.getheader("X-Process-Time")) >= 0
    # A page with its own policy keeps it, and still gets the rest once.
    page = _get(production_gunicorn, "/")
    assert "script-src 'self'" in page.getheader("Content-Security-Policy")
    assert [n.lower() for n, _ in page.getheaders()].count("content-security-policy") == 1
    assert page.getheader("X-Frame-Options") == "DENY"

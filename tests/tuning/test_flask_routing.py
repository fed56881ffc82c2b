"""RememberingFlask's URL adapter equals Flask's own, request after request (tuning/)."""

from __future__ import annotations

import dataclasses

import pytest
from flask import Flask
from werkzeug.exceptions import BadHost, HTTPException
from werkzeug.test import EnvironBuilder

ENVIRONS = [
    {"base_url": "http://127.0.0.1:8000/", "path": "/healthz"},
    {"base_url": "http://example.com:80/", "path": "/api/v1/tasks/abc", "query_string": "a=1"},
    {"base_url": "https://Example.COM:443/", "path": "/api/v1/tasks/%C3%A9t%C3%A9"},
    {"base_url": "http://bücher.example/", "path": "/healthz", "method": "POST"},
    {"base_url": "http://127.0.0.1:8000/conveyor", "path": "/api/v1/tasks/x"},
    {
        "base_url": "http://127.0.0.1:8000/",
        "path": "/healthz",
        "headers": {"Connection": "keep-alive, Upgrade", "Upgrade": "websocket"},
    },
]

FIELDS = (
    "server_name",
    "script_name",
    "subdomain",
    "url_scheme",
    "path_info",
    "default_method",
    "query_args",
    "websocket",
)


@pytest.fixture(scope="module")
def app(settings):
    """The API on RememberingFlask, whatever CONVEYOR_TUNING says: the adjustment is under test."""
    from api import create_app
    from tuning.flask_routing import RememberingFlask

    flask_app = create_app(dataclasses.replace(settings, tuning="on"))
    assert isinstance(flask_app, RememberingFlask)
    yield flask_app
    flask_app.extensions["conveyor"].close()


def test_create_app_picks_the_class_the_switch_says(settings):
    from api import create_app
    from tuning.flask_routing import RememberingFlask

    stock = create_app(dataclasses.replace(settings, tuning="-flask_routing"))
    assert type(stock) is Flask and not isinstance(stock, RememberingFlask)
    stock.extensions["conveyor"].close()


def _adapters(app, **kwargs):
    environ = EnvironBuilder(**kwargs).get_environ()
    ours_request = app.request_class(environ)
    theirs_request = app.request_class(dict(environ))
    ours = app.create_url_adapter(ours_request)
    theirs = Flask.create_url_adapter(app, theirs_request)
    return ours, theirs, ours_request, theirs_request


@pytest.mark.parametrize("kwargs", ENVIRONS)
def test_each_request_gets_flasks_own_adapter(app, kwargs):
    app._adapter_origins.clear()
    for _ in range(3):  # the first builds it the long way, the others reuse the origin
        ours, theirs, ours_request, theirs_request = _adapters(app, **kwargs)
        assert {f: getattr(ours, f) for f in FIELDS} == {f: getattr(theirs, f) for f in FIELDS}
        assert ours_request.host == theirs_request.host
        try:
            expected = theirs.match(return_rule=True)
        except HTTPException as refused:  # 404, 405, a WebSocket mismatch: the same one
            with pytest.raises(type(refused)):
                ours.match(return_rule=True)
        else:
            assert ours.match(return_rule=True) == expected
    assert len(app._adapter_origins) == 1


def test_paths_of_one_origin_are_never_mixed_up(app):
    app._adapter_origins.clear()
    first, *_ = _adapters(app, base_url="http://h/", path="/api/v1/tasks/one", method="GET")
    second, *_ = _adapters(app, base_url="http://h/", path="/healthz", method="HEAD")
    assert (first.path_info, first.default_method) == ("/api/v1/tasks/one", "GET")
    assert (second.path_info, second.default_method) == ("/healthz", "HEAD")


def test_a_bad_host_is_refused_and_not_remembered(app):
    app._adapter_origins.clear()
    environ = EnvironBuilder(path="/healthz").get_environ()
    environ["HTTP_HOST"] = "a" * 64 + ".example"  # a label too long for IDNA
    with pytest.raises(BadHost):
        app.create_url_adapter(app.request_class(environ))
    assert app._adapter_origins == {}


def test_origins_are_bounded(app):
    app._adapter_origins.clear()
    for n in range(300):
        _adapters(app, base_url=f"http://host{n}.example/", path="/healthz")
    assert 0 < len(app._adapter_origins) <= 256


def test_over_http_a_request_answers_as_before(client):
    assert client.get("/healthz", base_url="http://example.com/").status_code == 200
    assert client.get("/nope", base_url="http://example.com/").status_code == 404


def test_origins_differing_only_by_mount_scheme_or_port_stay_apart(app):
    app._adapter_origins.clear()
    urls = ["http://h/", "http://h/mount", "https://h/", "http://h:8080/"]
    for _ in range(2):
        for base in urls:
            ours, theirs, *_ = _adapters(app, base_url=base, path="/healthz")
            assert {f: getattr(ours, f) for f in FIELDS} == {f: getattr(theirs, f) for f in FIELDS}
    assert len(app._adapter_origins) == len(urls)


def _matched(app, path, method="GET"):
    ours, *_ = _adapters(app, base_url="http://h/", path=path, method=method)
    return ours.match(return_rule=True)


def test_a_remembered_match_skips_werkzeugs_matcher_and_hands_out_fresh_arguments(app, monkeypatch):
    app._adapter_origins.clear()
    walks = []
    matcher = app.url_map._matcher
    original = matcher.match
    monkeypatch.setattr(matcher, "match", lambda *a: walks.append(a) or original(*a))
    _adapters(app, base_url="http://h/", path="/healthz")  # the origin, Flask's way
    rule, arguments = _matched(app, "/api/v1/tasks/abc")
    assert rule.rule == "/api/v1/tasks/<task_id>" and arguments == {"task_id": "abc"}
    arguments["task_id"] = "changed by a preprocessor"
    again_rule, again = _matched(app, "/api/v1/tasks/abc")
    assert again_rule is rule and again == {"task_id": "abc"}
    assert _matched(app, "/api/v1/tasks/xyz")[1] == {"task_id": "xyz"}
    assert _matched(app, "/api/v1/tasks/abc", "DELETE")[0].rule == "/api/v1/tasks/<task_id>"
    assert len(walks) == 3  # abc (GET), xyz, abc (DELETE): the second GET of abc was remembered


def test_refusals_are_not_remembered_and_answers_are_bounded(app):
    app._adapter_origins.clear()
    _adapters(app, base_url="http://h/", path="/healthz")
    for _ in range(2):
        with pytest.raises(HTTPException) as refused:
            _matched(app, "/healthz", "POST")
        assert refused.value.code == 405
    matches = next(iter(app._adapter_origins.values()))[-1]
    assert matches == {}
    for n in range(4200):
        _matched(app, f"/api/v1/tasks/{n}")
    assert 0 < len(matches) <= 4096

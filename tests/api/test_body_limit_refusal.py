"""The body-size guard (the wrapper reads Content-Length): 413 before any work, as any error."""

from __future__ import annotations

import logging

from tests.support.apps import app_with

ONE_MIB = 1024 * 1024


def test_a_refused_body_is_answered_like_any_other_error(settings, caplog):
    origin = "https://app.example"
    with app_with(settings, cors_origins=origin) as app:
        client = app.test_client()
        with caplog.at_level(logging.INFO, logger="conveyor.access"):
            response = client.post(
                "/api/v1/auth/login",
                data=b"x" * (ONE_MIB + 1),
                headers={
                    "Content-Type": "application/json",
                    "Origin": origin,
                    "X-Request-ID": "big-1",
                },
            )
    assert response.status_code == 413
    assert response.get_json() == {
        "error": {
            "code": "payload_too_large",
            "message": "request body exceeds the 1 MiB limit",
            "details": None,
        }
    }
    # Flask's error path ran: CORS for the allowed origin, the request id, the fixed headers.
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["X-Request-ID"] == "big-1"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # It keeps its route label (the URL was matched before the refusal).
    (line,) = [r for r in caplog.records if getattr(r, "request_id", None) == "big-1"]
    assert (line.route, line.status) == ("/api/v1/auth/login", 413)


def test_bodies_up_to_the_limit_and_streamed_bodies_are_not_refused_up_front(client):
    at_limit = client.post(
        "/api/v1/auth/login", data=b"x" * ONE_MIB, headers={"Content-Type": "application/json"}
    )
    assert at_limit.status_code == 400  # read, and found not to be JSON
    # A chunked body's Content-Length means nothing (werkzeug reads none): the
    # stream's own limit applies when a view reads it.
    streamed = client.post(
        "/api/v1/auth/login",
        data=b"{",
        headers={"Content-Type": "application/json"},
        environ_overrides={
            "CONTENT_LENGTH": str(ONE_MIB + 1),
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input_terminated": True,
        },
    )
    assert streamed.status_code == 400

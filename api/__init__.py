"""Conveyor's HTTP API: a thin Flask adapter over shared/ (app factory)."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Flask, Response, g, request

from api import observability, openapi
from api.errors import register_error_handlers
from api.hardening import init_hardening
from api.limits import init_rate_limits
from api.requests import MAX_BODY_BYTES
from api.stream_auth import init_stream_tickets
from shared.broker.publish import build_publisher
from shared.jobs.kinds import QUEUES
from shared.resources import Resources
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for `settings` (default: read from the environment once)."""
    from api.routes import (
        ai,
        auth,
        cache,
        docs,
        events,
        ledger,
        notifications,
        ops,
        pages,
        system,
        tasks,
        webhooks,
    )

    settings = settings or Settings.from_env()
    # Settings built in code skip from_env; production must still refuse an
    # unsafe configuration (e.g. no SECRET_KEY) before serving anything.
    settings.validate()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    res = Resources.build(settings)
    app.extensions["conveyor"] = res
    # The API publishes by task name (shared/broker) and never imports task code.
    app.extensions["conveyor.publisher"] = build_publisher(settings)

    register_error_handlers(app)
    app.wsgi_app = RequestIdentity(app.wsgi_app)  # type: ignore[method-assign]
    app.before_request(_start_request)
    # After _start_request, so the request id exists when the log context is bound.
    observability.init_app(app, res, list(QUEUES))
    for blueprint in (auth.bp, tasks.bp, ledger.bp, notifications.bp, ops.bp, system.bp, cache.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(ai.bp)
    # Tickets, and the stream routes as replay-and-close (the events process holds them open).
    app.register_blueprint(events.bp)
    init_stream_tickets(app)
    app.register_blueprint(webhooks.bp)
    # The two HTML pages: the jobs page at / and the API docs (their own CSPs).
    app.register_blueprint(pages.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(openapi.bp)
    init_hardening(app, settings)
    # Last: it applies the limits views declared, so every blueprint must be in.
    init_rate_limits(app, settings)
    _bootstrap_admin(res)
    return app


# Where RequestIdentity leaves the request's id for the Flask side (g.request_id).
REQUEST_ID_KEY = "conveyor.request_id"


class RequestIdentity:
    """WSGI middleware: each request's id and its X-Request-ID / X-Process-Time headers.

    Around the Flask app rather than in its hooks: the headers go on as plain
    tuples, which costs a fraction of an after_request hook's Headers updates.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        started = time.perf_counter()
        request_id = environ[REQUEST_ID_KEY] = _request_id(environ)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            elapsed_ms = (time.perf_counter() - started) * 1000
            headers.append(("X-Request-ID", request_id))
            headers.append(("X-Process-Time", f"{elapsed_ms:.2f}"))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def _request_id(environ: dict) -> str:
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    # Accept the client's id when it is a sane token; never echo arbitrary bytes.
    sane = 0 < len(incoming) <= 128 and incoming.isprintable()
    return incoming if sane else secrets.token_hex(16)


def _start_request() -> None:
    request_id = request.environ.get(REQUEST_ID_KEY)
    if request_id is None:  # an app without RequestIdentity: _finish_request sets the headers
        g.started = time.perf_counter()
        request_id = _request_id(request.environ)
    g.request_id = request_id


def _finish_request(response: Response) -> Response:
    """X-Request-ID and X-Process-Time for an app using hooks rather than RequestIdentity."""
    if REQUEST_ID_KEY not in request.environ:
        response.headers["X-Request-ID"] = g.get("request_id") or secrets.token_hex(16)
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        response.headers["X-Process-Time"] = f"{elapsed_ms:.2f}"
    return response


def _bootstrap_admin(res: Resources) -> None:
    """Create or update CONVEYOR_ADMIN_USERNAME at start-up (if both variables are set)."""
    settings = res.settings
    if not (settings.admin_username and settings.admin_password):
        return
    from shared.accounts import UsernameTaken, ensure_admin

    for _attempt in range(2):  # two web workers may race to create the same admin
        try:
            with res.sessions.begin() as session:
                ensure_admin(
                    session,
                    res.hasher,
                    settings.admin_username,
                    settings.admin_password,
                    settings.default_currency,
                )
            return
        except UsernameTaken:
            continue
        except Exception:
            log.exception("admin bootstrap failed; the API starts without it")
            return

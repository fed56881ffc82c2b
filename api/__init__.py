"""Conveyor's HTTP API: a thin Flask adapter over shared/ (app factory)."""

from __future__ import annotations

import logging
import time
import uuid

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
    app.before_request(_start_request)
    app.after_request(_finish_request)
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


def _start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    # Accept the client's id when it is a sane token; never echo arbitrary bytes.
    g.request_id = (
        incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    )


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
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

"""Conveyor's HTTP API: a thin Flask adapter over shared/ (app factory)."""

from __future__ import annotations

import logging
import secrets
import time

from flask import Flask, Response, g, request

import tuning
from api import dispatch, observability, openapi
from api import tracing as api_tracing
from api.errors import register_error_handlers
from api.hardening import init_hardening
from api.held_streams import init_held_streams
from api.limits import init_rate_limits
from api.requests import MAX_BODY_BYTES
from api.stream_auth import init_stream_tickets
from infra.broker.publish import build_publisher
from infra.settings import Settings
from shared.jobs.fair import FairPublisher
from shared.jobs.kinds import QUEUES
from shared.resources import Resources

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for `settings` (default: read from the environment once)."""
    from api.routes import (
        ai,
        auth,
        cache,
        docs,
        events,
        failed_jobs,
        fair_share,
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
    # Before any engine or Redis client exists, so theirs are traced too (off: nothing).
    api_tracing.start(settings, "web")
    # Flask, or Flask remembering its per-request answers (tuning/flask_routing.py).
    app_class = Flask
    if tuning.enabled(settings, "flask_routing"):
        from tuning.flask_routing import RememberingFlask as app_class

        tuning.applied("flask_routing")
    app = app_class(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    res = Resources.build(settings)
    app.extensions["conveyor"] = res
    # The API publishes by task name (shared/broker) and never imports task code.
    # Fair-queue jobs join their users' lines; the gate publishes them in turn.
    app.extensions["conveyor.publisher"] = FairPublisher(
        build_publisher(settings, QUEUES), res.fair
    )

    register_error_handlers(app)
    app.before_request(_start_request)
    # The request id, timing, log context, metrics and access line (one WSGI wrapper).
    observability.init_app(app, res, list(QUEUES))
    for blueprint in (auth.bp, tasks.bp, ledger.bp, notifications.bp, ops.bp, system.bp, cache.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(failed_jobs.bp)
    app.register_blueprint(fair_share.bp)
    tasks.init_poll_reads(app)
    app.register_blueprint(ai.bp)
    # Tickets, and the stream routes: held open a while in a gevent worker, else
    # replay-and-close (the events process holds them open for good).
    app.register_blueprint(events.bp)
    init_stream_tickets(app)
    init_held_streams(app, settings)
    app.register_blueprint(webhooks.bp)
    # The two HTML pages: the jobs page at / and the API docs (their own CSPs).
    app.register_blueprint(pages.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(openapi.bp)
    if tuning.enabled(settings, "accepted_template"):
        app.extensions[dispatch.ACCEPTED_TEMPLATE] = True
        tuning.applied("accepted_template")
    init_hardening(app, settings)
    # Last: it applies the limits views declared, so every blueprint must be in.
    init_rate_limits(app, settings)
    # Outermost: each request's server span holds everything above (when tracing is on).
    api_tracing.instrument(app)
    _bootstrap_admin(res)
    return app


# Where the request wrapper (api/observability.py) leaves the request's id.
REQUEST_ID_KEY = observability.REQUEST_ID_KEY


def _request_id(environ: dict) -> str:
    return observability.request_id_for(environ)


def _start_request() -> None:
    """Give views g.request_id, and the request wrapper this request's Request and `g`.

    Also raises the refusal the wrapper left for this request (a body over the
    limit), as the first hook, so the error takes Flask's usual path.
    """
    # The objects behind `request` and `g`, looked up once each: a LocalProxy
    # costs a lookup per attribute.
    current = request._get_current_object()  # type: ignore[attr-defined]
    request_globals = g._get_current_object()
    environ = current.environ
    request_id = environ.get(REQUEST_ID_KEY)
    if request_id is None:  # an app without the wrapper: _finish_request sets the headers
        request_globals.started = time.perf_counter()
        request_id = _request_id(environ)
    request_globals.request_id = request_id
    environ[observability.REQUEST_KEY] = current
    environ[observability.GLOBALS_KEY] = request_globals
    refusal = environ.get(observability.REFUSAL_KEY)
    if refusal is not None:
        raise refusal


def _finish_request(response: Response) -> Response:
    """X-Request-ID and X-Process-Time for an app without the request wrapper."""
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

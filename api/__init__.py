"""Conveyor's HTTP API: a thin Flask adapter over shared/ (app factory)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response, g, request
from flask.globals import _cv_app, _cv_request
from werkzeug.routing import MapAdapter

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
    app = ConveyorFlask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    res = Resources.build(settings)
    app.extensions["conveyor"] = res
    # The API publishes by task name (shared/broker) and never imports task code.
    app.extensions["conveyor.publisher"] = build_publisher(settings)

    register_error_handlers(app)
    app.before_request(_start_request)
    # The request id, timing, log context, metrics and access line (one WSGI wrapper).
    observability.init_app(app, res, list(QUEUES))
    for blueprint in (auth.bp, tasks.bp, ledger.bp, notifications.bp, ops.bp, system.bp, cache.bp):
        app.register_blueprint(blueprint)
    tasks.init_poll_reads(app)
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


# What a request's URL adapter takes from the environment besides its method,
# path and query: the Host (or server name and port), the scheme, a WebSocket
# upgrade and the mount point.
_ADAPTER_ENVIRON = (
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
    "HTTP_CONNECTION",
    "HTTP_UPGRADE",
    "SCRIPT_NAME",
)
# Distinct such combinations remembered per process (clients choose the Host).
_MAX_ADAPTER_ORIGINS = 256
# Routing answers remembered per origin (clients choose the path: bounded).
_MAX_MATCHES = 4096


class ConveyorFlask(Flask):
    """Flask, remembering what it would otherwise work out again on every request.

    Flask asks `inspect.iscoroutinefunction` of every hook and view on every
    request (`ensure_sync`); the answer never changes for a function, and the
    question was a measurable share of a poll's CPU. And every request's URL
    adapter parses the Host header twice and IDNA-encodes it (about a tenth of
    a /healthz's time in the app): `create_url_adapter` does that once per
    distinct Host, scheme and mount point, and that origin's adapters
    remember which rule a path and method matched (`_RememberingAdapter`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_callables: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._adapter_origins: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        super().__init__(*args, **kwargs)

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        """Flask's URL adapter; its host-derived parts kept per distinct origin."""
        if (
            request is None
            or self.config["TRUSTED_HOSTS"] is not None
            or self.config["SERVER_NAME"] is not None
            or self.url_map.host_matching
            or self.subdomain_matching
        ):
            return super().create_url_adapter(request)
        environ = request.environ
        key = tuple(environ.get(name) for name in _ADAPTER_ENVIRON)
        origin = self._adapter_origins.get(key)
        if origin is None:
            # Flask's own path (a bad Host raises here and is never remembered).
            adapter = super().create_url_adapter(request)
            if adapter is not None:
                if len(self._adapter_origins) >= _MAX_ADAPTER_ORIGINS:
                    self._adapter_origins.clear()
                self._adapter_origins[key] = (
                    request.host,
                    adapter.server_name,
                    adapter.script_name,
                    adapter.subdomain,
                    adapter.url_scheme,
                    {},  # this origin's routing answers (_RememberingAdapter)
                )
            return adapter
        host, server_name, script_name, subdomain, url_scheme, matches = origin
        request.host = host  # what Flask's create_url_adapter sets  # type: ignore[misc]
        path_info = environ.get("PATH_INFO")
        query = environ.get("QUERY_STRING")
        # werkzeug's bind_to_environ: WSGI strings are latin-1 wrapped UTF-8.
        adapter = _RememberingAdapter(
            self.url_map,
            server_name,
            script_name,
            subdomain,
            url_scheme,
            _wsgi_text(path_info) if path_info is not None else "/",
            environ["REQUEST_METHOD"],
            _wsgi_text(query) if query is not None else None,
        )
        adapter.matches = matches
        return adapter

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's ensure_sync, its answer kept per function."""
        try:
            return self._sync_callables[func]
        except KeyError:
            pass
        except TypeError:  # an unhashable callable: ask every time
            return super().ensure_sync(func)
        sync = super().ensure_sync(func)
        if len(self._sync_callables) < 10_000:  # bound it, should callables be made per request
            self._sync_callables[func] = sync
        return sync


class _RememberingAdapter(MapAdapter):
    """A MapAdapter whose request's own match is looked up in its origin's answers first.

    werkzeug walks its state machine for every request (a twentieth of a
    /healthz's CPU). Its answer depends only on the map, the origin (server
    name, subdomain, mount point, scheme: one `matches` dict per origin),
    the path and the method, and the map is fixed once Flask serves its
    first request. Only answers are kept: a 404, 405 or redirect raises
    again each time. Each hit gets its own copy of the view arguments
    (Flask's URL value preprocessors may change them).
    """

    matches: dict[tuple[str, str, bool, bool], tuple[Any, dict[str, Any]]]

    def match(  # type: ignore[override]
        self,
        path_info: str | None = None,
        method: str | None = None,
        return_rule: bool = False,
        query_args: Any = None,
        websocket: bool | None = None,
    ) -> tuple[Any, Any]:
        """werkzeug's match; the request's own (no arguments but return_rule) remembered."""
        if path_info is not None or method is not None or websocket is not None:
            return super().match(path_info, method, return_rule, query_args, websocket)
        key = (self.path_info, self.default_method, self.websocket, return_rule)
        found = self.matches.get(key)
        if found is not None:
            return found[0], dict(found[1])
        target, arguments = super().match(return_rule=return_rule, query_args=query_args)
        if len(self.matches) >= _MAX_MATCHES:
            self.matches.clear()
        self.matches[key] = (target, dict(arguments))
        return target, arguments


def _wsgi_text(value: str) -> str:
    return value.encode("latin1").decode(errors="replace")


# Where the request wrapper (api/observability.py) leaves the request's id.
REQUEST_ID_KEY = observability.REQUEST_ID_KEY


def _request_id(environ: dict) -> str:
    return observability.request_id_for(environ)


def _start_request() -> None:
    """Give views g.request_id, and the request wrapper this request's Request and `g`.

    Also raises the refusal the wrapper left for this request (a body over the
    limit), as the first hook, so the error takes Flask's usual path.
    """
    # The context variables behind `request` and `g`, read once each: werkzeug's
    # LocalProxy costs a lookup per attribute (Flask 3.1's own globals module).
    current = _cv_request.get().request
    request_globals = _cv_app.get().g
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

"""Flask, remembering the per-request answers that never change for a process.

Changes: a Flask subclass (`RememberingFlask`, chosen by create_app) keeps
`ensure_sync`'s answer per function; its `create_url_adapter` works out the
host-derived parts once per distinct Host, scheme and mount point, and hands
out a werkzeug MapAdapter subclass whose `match` remembers which rule a
path and method matched (bounded; only answers: a 404, 405 or redirect
raises again each time; each hit gets its own copy of the view arguments).

Why: Flask asks `inspect.iscoroutinefunction` of every hook and view on every
request, every request's URL adapter parses the Host header twice and
IDNA-encodes it (about a tenth of a /healthz's time in the app), and
werkzeug walks its matcher for every request (a twentieth)
(docs/benchmarks.md, "URL adapters").

Written against: flask 3.1.3 (`create_url_adapter`, `ensure_sync`, how it
sets `request.host`), werkzeug 3.1.9 (`MapAdapter`'s constructor and `match`,
`bind_to_environ`'s decoding).
Breaks: tests/tuning/test_flask_routing.py (every adapter equal to Flask's
own for hosts, IDNA names, ports, upgrades and mounts; refusals not kept).
Off: `CONVEYOR_TUNING=-flask_routing` (or `off`): plain Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request
from werkzeug.routing import MapAdapter

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


class RememberingFlask(Flask):
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

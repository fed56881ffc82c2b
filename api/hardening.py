"""Secure response defaults: security headers, CORS for configured origins, gzip, body cap."""

from __future__ import annotations

from flask import Flask, Response
from flask_compress import Compress
from flask_cors import CORS

from api import observability
from api.errors import ApiError
from api.requests import MAX_BODY_BYTES
from infra.settings import Settings

# A refused body is read and discarded up to this much, so the client can
# finish sending and read our 413; past it the connection is simply closed.
DRAIN_MAX_BYTES = 16 * 1024 * 1024
# Small bodies gain nothing from gzip and pay its CPU and latency.
COMPRESS_MIN_BYTES = 500
# One year, the preload list's minimum; only sent in production (behind TLS).
HSTS = "max-age=31536000; includeSubDomains"
# A JSON API renders nothing: no scripts, no framing, no referrer leaks.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# The two HTML pages (GET / and GET /api/v1/docs) relax that policy for
# themselves only: their own scripts and styles, API calls to their own origin,
# still no framing, no plugins, no inline script. Swagger UI sets inline style
# attributes and data: images, so its page allows those for styles and images.
JOBS_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# Headers a browser client may read / send cross-origin.
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "X-Request-ID",
    "X-Process-Time",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Idempotent-Replayed",
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"]


def cors_origins(settings: Settings) -> list[str]:
    """CORS_ORIGINS as a list (comma-separated); empty means no cross-origin access."""
    return [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]


def page_policy(response: Response, policy: str) -> Response:
    """Give one HTML page its own Content-Security-Policy (the default is kept for the rest)."""
    response.headers["Content-Security-Policy"] = policy
    return response


def init_hardening(app: Flask, settings: Settings) -> None:
    """Install the body-size guard, CORS, gzip and security headers on `app`."""
    # The guard and the fixed headers are the one request wrapper's
    # (api/observability.py), not Flask hooks: a hook costs every request a
    # call through Flask's machinery and context-local lookups.
    hooks = app.extensions.get(observability.EXTENSION)
    if hooks is None:
        raise RuntimeError("init_hardening needs observability.init_app first (its wrapper)")
    # Flask enforces MAX_CONTENT_LENGTH only when a view reads the body; this
    # answers 413 for every route, before any work, when the client says so up front.
    hooks.refuse_bodies_over(MAX_BODY_BYTES, _body_too_large)
    origins = cors_origins(settings)
    if origins:
        CORS(
            app,
            origins=origins,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            supports_credentials=False,
            max_age=600,
        )
    app.config.update(
        COMPRESS_ALGORITHM=["gzip"],
        COMPRESS_MIN_SIZE=COMPRESS_MIN_BYTES,
        COMPRESS_MIMETYPES=["application/json", "text/plain"],
        # Registered below, behind a size check.
        COMPRESS_REGISTER=False,
    )
    compress = Compress(app)

    @app.after_request
    def _compress_large(response: Response) -> Response:
        # Most answers (a poll, /healthz) are far below the threshold: skip
        # flask-compress's negotiation for them (`Vary` is still added below).
        body = response.response
        # A body set in one piece (jsonify, a stored document) is a list of
        # one bytes object: its size without parsing Content-Length back.
        if isinstance(body, list) and len(body) == 1 and len(body[0]) < COMPRESS_MIN_BYTES:
            return response
        length = response.content_length
        if length is not None and length < COMPRESS_MIN_BYTES:
            return response
        return compress.after_request(response)

    # Fixed headers go on as plain tuples, by the one request wrapper
    # (api/observability.py) rather than an after_request hook: werkzeug's
    # Headers.setdefault raises and catches a KeyError per missing header.
    defaults = response_defaults(production=settings.is_production)
    hooks.set_default_headers(defaults, finish=finish_headers)


def response_defaults(*, production: bool) -> dict[str, str]:
    """The headers every response gets unless it sets them itself."""
    defaults = dict(SECURITY_HEADERS)
    # Responses carry per-user data and job state: no cache may keep them.
    defaults["Cache-Control"] = "no-store"
    if production:
        defaults["Strict-Transport-Security"] = HSTS
    # gzip may be chosen by Accept-Encoding: caches must key on it (as
    # flask-compress does for the bodies it compresses); finish_headers adds
    # it to a Vary the response set itself.
    defaults["Vary"] = "Accept-Encoding"
    return defaults


def finish_headers(
    environ: dict, status: str, headers: list[tuple[str, str]], present: set[str]
) -> None:
    """After the defaults: Vary names Accept-Encoding; a refused body is drained before a 413."""
    if "vary" in present:
        _vary_on_encoding(headers)
    if status.startswith("413"):
        _drain_request_body(environ, headers)


def _vary_on_encoding(headers: list[tuple[str, str]]) -> None:
    for index, (name, value) in enumerate(headers):
        if name.lower() == "vary" and "accept-encoding" not in value.lower():
            headers[index] = (name, f"{value}, Accept-Encoding")


def _drain_request_body(environ: dict, headers: list[tuple[str, str]]) -> None:
    # Answering while the client is still sending makes the server close a
    # socket with unread data: the client sees a reset, not our JSON error.
    stream = environ.get("wsgi.input")
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if stream is not None and length <= DRAIN_MAX_BYTES:
        remaining = DRAIN_MAX_BYTES
        try:
            while remaining > 0:
                chunk = stream.read(min(65536, remaining))
                if not chunk:
                    return  # all read: the connection can stay open
                remaining -= len(chunk)
        except (OSError, ValueError):
            pass
    # Too much (or unreadable) to drain: close rather than leave unread data.
    headers[:] = [(name, value) for name, value in headers if name.lower() != "connection"]
    headers.append(("Connection", "close"))


def _body_too_large() -> ApiError:
    return ApiError(413, "payload_too_large", "request body exceeds the 1 MiB limit")

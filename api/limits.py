"""Rate limits (flask-limiter, counters in Redis): per IP, per user, per username on auth.

Views opt into stricter limits, or out of every limit, with markers
(`@auth_limited`, `@ai_limited`, `@unlimited`), or trade the per-user budget for
the polling one (`@poll_limited`: status polls and stream connects, counted
apart so following a job never starves the rest of the API); `init_rate_limits` builds one
Limiter per app and applies them, so several apps (tests, gunicorn workers)
never share limiter state. Only flask-limiter's public API is used.

When the limiter's Redis is down: every route fails open (flask-limiter's
`swallow_errors`: served uncounted, logged) because its limit only protects
capacity, and the same outage already answers 503 wherever the route itself
needs Redis. Login and register fail closed (503): their limit is the
brute-force defence, so their views first ask the store whether it answers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits.errors import StorageError
from werkzeug.middleware.proxy_fix import ProxyFix

from api.errors import ApiError
from api.security import bearer_identity
from api.stream_auth import ticket_identity
from infra.redis_store import limiter_storage
from infra.settings import Settings

log = logging.getLogger(__name__)

View = TypeVar("View", bound=Callable[..., Any])

# A limiter call waits at most this long on its Redis, so a dead or
# blackholed server costs a request half a second, never a hang.
STORAGE_TIMEOUT_SECONDS = 0.5
_MARK = "__conveyor_rate_limits__"
_STORAGE_ERRORS = (redis.RedisError, StorageError, OSError)


def auth_limited(view: View) -> View:
    """Mark a login/register view: the auth limit per IP and per username, fail closed."""
    setattr(view, _MARK, "auth")
    return view


def ai_limited(view: View) -> View:
    """Mark a view with the AI limit per user, on top of the per-user budget."""
    setattr(view, _MARK, "ai")
    return view


def poll_limited(view: View) -> View:
    """Mark a status poll or stream connect: RATELIMIT_POLL per user instead of the user budget."""
    setattr(view, _MARK, "poll")
    return view


def suggest_poll_interval(response: Response, seconds: int) -> Response:
    """Send `Retry-After: seconds` on a 2xx as the suggested wait before the next poll."""
    g.poll_interval = seconds
    response.headers["Retry-After"] = str(seconds)
    return response


def client_ip() -> str:
    return request.remote_addr or "unknown"


def caller_key() -> str:
    """The authenticated user when the bearer token is valid, else the client IP."""
    identity = bearer_identity()
    return f"user:{identity.user_id}" if identity else f"ip:{client_ip()}"


def poll_key() -> str:
    """The caller by bearer token or stream ticket (EventSource sends no header), else the IP."""
    identity = bearer_identity() or ticket_identity()
    return f"user:{identity.user_id}" if identity else f"ip:{client_ip()}"


def username_key() -> str:
    """The username a login/register body names (lower-cased), so spreading IPs does not help."""
    body = request.get_json(silent=True, cache=True)
    username = body.get("username") if isinstance(body, dict) else None
    if not isinstance(username, str) or not username:
        return "username:-"
    return f"username:{username[:64].lower()}"


def unlimited(view: View) -> View:
    """Mark a view no limit applies to: probes and scrapes must work when things are busy."""
    setattr(view, _MARK, "none")
    return view


def is_unlimited(view: Callable[..., Any] | None) -> bool:
    """Whether `view` was marked `@unlimited` (the OpenAPI document asks too)."""
    return getattr(view, _MARK, None) == "none"


def _endpoint_unlimited() -> bool:
    return is_unlimited(current_app.view_functions.get(request.endpoint or ""))


def _endpoint_poll_limited() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, _MARK, None) == "poll"


def _retry_after_only_as_hint(response: Response) -> Response:
    """Retry-After on a 2xx only where the view suggested a poll interval; an error keeps its own.

    flask-limiter sets Retry-After (its window's reset, up to a minute) on
    every limited response, or the later of that and one already there. On a
    success that reads as "wait this long", which only a poll answer means; on
    an error that set its own (a 429 `too_many_inflight_jobs`, a 503) the
    error knows better. The limiter's own 429 keeps the limiter's value.
    Registered before the limiter's hook, so it runs after it.
    """
    if 200 <= response.status_code < 300:
        hint = g.get("poll_interval")
        if hint is None:
            response.headers.pop("Retry-After", None)
        else:
            response.headers["Retry-After"] = str(hint)
    elif (own := g.get("error_retry_after")) is not None:
        response.headers["Retry-After"] = own
    return response


def _fail_closed(limiter: Limiter, view: View) -> View:
    """Answer 503 before `view` when the limiter's store does not answer."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not limiter.storage.check():
            log.warning("rate limit storage unavailable: refusing %s", request.endpoint)
            raise ApiError(
                503,
                "service_unavailable",
                "rate limiting is unavailable; retry shortly",
                {"dependency": "rate_limit_storage"},
                {"Retry-After": "5"},
            )
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The limiter's Redis as the `limits` library takes it: URI, options (infra/redis_store.py)."""
    return limiter_storage(settings, settings.ratelimit_storage_url or settings.redis_url)


def init_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Build this app's limiter from `settings`; None when RATELIMIT_ENABLED is false."""
    if settings.trusted_proxy_hops > 0:
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    if not settings.ratelimit_enabled:
        return None

    def default_limit() -> str:
        return settings.ratelimit_user if bearer_identity() else settings.ratelimit_anonymous

    # Before the limiter's own after_request hook (Flask runs them in reverse).
    app.after_request(_retry_after_only_as_hint)
    uri, storage_options = storage(settings)
    limiter = Limiter(
        caller_key,
        # One budget per caller across the whole API (flask-limiter's default
        # limits would count each route separately); polls have their own.
        application_limits=[default_limit],
        application_limits_exempt_when=_endpoint_poll_limited,
        storage_uri=uri,
        storage_options={
            **storage_options,
            "key_prefix": f"{settings.redis_key_prefix}limits",
            "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            "socket_timeout": STORAGE_TIMEOUT_SECONDS,
        },
        # A fixed window is one INCR+EXPIRE per limit per request.
        strategy="fixed-window",
        headers_enabled=True,
        retry_after="delta-seconds",
        # Fail open on a store error (logged); auth views fail closed themselves.
        swallow_errors=True,
        key_prefix="api",
    )
    limiter.init_app(app)
    limiter.request_filter(_endpoint_unlimited)
    # One budget shared by every poll-limited view (status polls and stream connects).
    poll_budget = limiter.shared_limit(settings.ratelimit_poll, scope="poll", key_func=poll_key)
    # Route limits run in flask-limiter's view wrapper, so the app must serve
    # the wrapped function; wraps() keeps the markers and OpenAPI declaration.
    for endpoint, view in list(app.view_functions.items()):
        mark = getattr(view, _MARK, None)
        if mark == "auth":
            by_ip = limiter.limit(settings.ratelimit_auth, key_func=client_ip, scope="auth-ip")
            by_name = limiter.limit(
                settings.ratelimit_auth, key_func=username_key, scope="auth-username"
            )
            app.view_functions[endpoint] = _fail_closed(limiter, by_name(by_ip(view)))
        elif mark == "poll":
            app.view_functions[endpoint] = poll_budget(view)
        elif mark == "ai":
            app.view_functions[endpoint] = limiter.limit(
                settings.ratelimit_ai, key_func=caller_key
            )(view)
    return limiter

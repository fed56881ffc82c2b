"""Bearer-token authentication and the admin check."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import g, request

from api.errors import ApiError
from api.extensions import resources
from shared import accounts


def current_identity() -> accounts.Identity:
    """The caller's identity (the route must be decorated with `require_auth`)."""
    return g.identity


_NO_TOKEN = "missing"  # noqa: S105 - a marker, not a secret
_BAD_TOKEN = "invalid"  # noqa: S105 - a marker, not a secret
_UNSET = object()


def bearer_identity() -> accounts.Identity | None:
    """The valid bearer token's identity, or None; verified once per request and memoised.

    The rate limiter keys on it before the view runs; `require_auth` reuses it.
    """
    # One context lookup for `g`, not one per use (a poll's hot path).
    request_globals = g._get_current_object()
    found = getattr(request_globals, "bearer_identity", _UNSET)
    if found is _UNSET:
        found = request_globals.bearer_identity = _verify_bearer()
    return found if isinstance(found, accounts.Identity) else None


def _verify_bearer() -> accounts.Identity | str:
    # The WSGI variable itself: what request.headers["Authorization"] reads.
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _NO_TOKEN
    try:
        return resources().tokens.verify(token.strip())
    except accounts.InvalidToken:
        return _BAD_TOKEN


def _authenticate() -> accounts.Identity:
    identity = bearer_identity()
    if identity is not None:
        return identity
    if g.bearer_identity == _NO_TOKEN:
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <access_token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    raise ApiError(
        401,
        "invalid_token",
        "the access token is invalid or expired",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def require_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Reject the request with 401 unless it carries a valid bearer token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.identity = _authenticate()
        return view(*args, **kwargs)

    return wrapper


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 without a valid token, 403 unless the user is (still) an admin."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.identity = _authenticate()
        with resources().sessions() as session:
            if not accounts.is_admin(session, g.identity.user_id):
                raise ApiError(403, "forbidden", "this endpoint is for administrators")
        return view(*args, **kwargs)

    return wrapper

"""Who may open an event stream: a bearer token in the header, or a stream ticket in `?ticket=`.

Only stream views call `require_stream_auth`; every other view knows only
bearer tokens, so a ticket opens streams and nothing else, and a bearer token
in a URL is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request

from api.errors import ApiError
from api.security import bearer_identity, require_auth
from shared import accounts
from shared.stream_tickets import StreamTickets


def tickets() -> StreamTickets:
    return current_app.extensions["conveyor.stream_tickets"]


def init_stream_tickets(app: Any) -> None:
    """Give `app` the ticket issuer/verifier for its settings."""
    settings = app.extensions["conveyor"].settings
    app.extensions["conveyor.stream_tickets"] = StreamTickets(
        settings.signing_key, settings.events_ticket_ttl_seconds
    )


def ticket_identity() -> accounts.Identity | None:
    """The identity of a valid `?ticket=` on a stream view, else None; memoised per request."""
    if "ticket_identity" not in g:
        g.ticket_identity = None
        ticket = request.args.get("ticket")
        view = current_app.view_functions.get(request.endpoint or "")
        if ticket and getattr(view, "__conveyor_stream__", False):
            try:
                g.ticket_identity = tickets().verify(ticket)
            except accounts.InvalidToken:
                g.ticket_identity = None
    return g.ticket_identity


def require_stream_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """A bearer token or a stream ticket; 401 like `require_auth` otherwise."""
    bearer_only = require_auth(view)

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if bearer_identity() is None and request.args.get("ticket"):
            identity = ticket_identity()
            if identity is None:
                raise ApiError(
                    401, "invalid_token", "the stream ticket is invalid or expired",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )  # fmt: skip
            g.identity = identity
            return view(*args, **kwargs)
        return bearer_only(*args, **kwargs)

    wrapper.__conveyor_stream__ = True  # type: ignore[attr-defined]
    return wrapper

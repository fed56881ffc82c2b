"""The one error shape: {"error": {"code", "message", "details"}}, for every status."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, g, jsonify
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the client caused or should know about, with a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    response.headers.update(headers or {})
    if headers and "Retry-After" in headers:
        # Kept for the rate limiter's hook (api/limits.py), which would
        # otherwise replace it with its window's reset.
        g.error_retry_after = headers["Retry-After"]
    return response


def not_found(what: str = "task") -> ApiError:
    """The one 404 for a task (or `what`): unknown and not-yours are indistinguishable."""
    return ApiError(404, "not_found", f"no such {what}")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "request body exceeds the 1 MiB limit"
        response = error_response(status, _HTTP_CODES.get(status, "http_error"), message)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> Response:
        log.warning("redis unavailable: %s", exc.__class__.__name__)
        return _unavailable("redis")

    @app.errorhandler(BrokerError)
    def _broker_down(exc: BrokerError) -> Response:
        log.warning("broker unavailable: %s", exc.__class__.__name__)
        return _unavailable("broker")

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError) -> Response:
        if exc.connection_invalidated or _is_connection_problem(exc):
            log.warning("database unavailable: %s", exc.orig.__class__.__name__)
            return _unavailable("database")
        log.exception("database error")
        return error_response(500, "internal_error", "internal server error")

    @app.errorhandler(PoolTimeout)
    def _pool_exhausted(_exc: PoolTimeout) -> Response:
        return _unavailable("database")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")


def _is_connection_problem(exc: DBAPIError) -> bool:
    # psycopg2 reports refused/broken connections and server shutdown as
    # OperationalError; anything else is our bug, not an outage.
    return exc.orig.__class__.__name__ in ("OperationalError", "InterfaceError")


def _unavailable(dependency: str) -> Response:
    return error_response(
        503,
        "service_unavailable",
        f"{dependency} is unavailable; retry shortly",
        {"dependency": dependency},
        {"Retry-After": "5"},
    )

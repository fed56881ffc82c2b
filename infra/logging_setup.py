"""One logging configuration for web, workers and beat: JSON (or console) lines with context."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from infra import tracing
from infra.redaction import REDACTED, is_secret_name, redact, redact_text
from infra.settings import Settings

# Per request / per task fields (request_id, task_id, job_kind, user_id). A
# ContextVar is private to each thread and each greenlet, so gthread web
# workers and gevent task pools never see each other's context.
_context: ContextVar[dict[str, Any] | None] = ContextVar("conveyor_log_context", default=None)

# Attributes every LogRecord has; anything else on a record is context or `extra`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_OWNED = "_conveyor_handler"


def bind(**fields: Any) -> None:
    """Add `fields` to every log line this thread or greenlet writes from now on."""
    fresh = {k: v for k, v in fields.items() if v is not None}
    _context.set({**(_context.get() or {}), **fresh})


def clear() -> None:
    """Forget the bound context (end of a request or task)."""
    _context.set({})


def start_request(request_id: str) -> None:
    """Bind a new request's id, and nothing else, to its log lines (the web's per-request call)."""
    # One ContextVar.set: what clear() then bind() would do, without their dict copies.
    _context.set({"request_id": request_id})


def end_request() -> None:
    """Forget the request's context (the twin of start_request)."""
    _context.set(None)


def current_context() -> dict[str, Any]:
    """The fields bound right now."""
    return dict(_context.get() or {})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind `fields` for the duration of a block, then restore what was there."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (explicit `extra` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if tracing.ACTIVE:  # a line written inside a span names it
            for key, value in tracing.log_fields().items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class RedactingFilter(logging.Filter):
    """Replaces secrets in the message, its arguments and every extra field."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = redact_text(message), None
        for key in [k for k in record.__dict__ if k not in _STANDARD_ATTRS]:
            value = record.__dict__[key]
            record.__dict__[key] = REDACTED if is_secret_name(key) else redact(value)
        return True


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines for development, with the context appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return line


def build_formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT: `json` (one object per line) or `console`."""
    if log_format == "console":
        return ConsoleFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="timestamp",
        json_ensure_ascii=False,
    )


def build_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    """A stream handler with Conveyor's filters and formatter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(build_formatter(settings.log_format))
    return handler


def configure_logging(settings: Settings, *, stream: Any = None) -> logging.Handler:
    """Route every logger through one Conveyor handler at LOG_LEVEL (idempotent)."""
    root = logging.getLogger()
    # Replace only the handler we installed before: pytest's capture handlers
    # (and any a host process adds) stay in place.
    for old in [h for h in root.handlers if getattr(h, _OWNED, False)]:
        root.removeHandler(old)
    handler = build_handler(settings, stream)
    setattr(handler, _OWNED, True)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Python warnings (deprecations, Celery's security notes) become log lines too.
    logging.captureWarnings(True)
    # Gunicorn's error log has its own handlers; give them our format too so
    # the web container writes one kind of line.
    for existing in logging.getLogger("gunicorn.error").handlers:
        existing.filters = list(handler.filters)
        existing.setFormatter(handler.formatter)
    return handler

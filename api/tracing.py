"""Tracing for the web and events processes: Flask's requests as server spans, X-Trace-Id, streams.

`start(settings, process)` starts the process's exporter (infra/tracing.py)
before anything builds an engine or a Redis client; `instrument(app)` then
wraps the app with OpenTelemetry's maintained Flask instrumentation: an
incoming W3C `traceparent` is continued, otherwise a trace starts, and every
traced response carries `X-Trace-Id`. Probes and /metrics are not traced.
Both do nothing while tracing is off.

A stream's Flask span ends when the view returns its generator, long before
the stream does (opentelemetry-python-contrib#3401): `stream_span` is a span
of its own that the stream's generator ends when the stream ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Flask

from infra import tracing

UNTRACED = "healthz,readyz,metrics"


def start(settings: Any, process: str) -> bool:
    """Start exporting this process's spans; False when tracing is off."""
    return tracing.configure(settings, process)


def instrument(app: Flask) -> None:
    """Server spans for `app`'s requests (when tracing is on)."""
    if not tracing.ACTIVE:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.tracer_provider(),
        response_hook=_trace_id_header,
        excluded_urls=UNTRACED,
    )


def _trace_id_header(span: Any, _status: str, response_headers: list[tuple[str, str]]) -> None:
    # The client's handle on its request's trace (the 202's, and every other answer's).
    context = span.get_span_context()
    if context.is_valid:
        response_headers.append(("X-Trace-Id", f"{context.trace_id:032x}"))


def stream_span(frames: Iterator[str], name: str, attributes: dict[str, Any]) -> Iterator[str]:
    """`frames`, inside a span that lasts as long as the stream (a no-op while tracing is off)."""
    if not tracing.ACTIVE:
        return frames
    return _spanned(frames, tracing.start_span(name, kind="server", attributes=attributes))


def _spanned(frames: Iterator[str], started: Any) -> Iterator[str]:
    sent = 0
    try:
        for chunk in frames:
            sent += 1
            yield chunk
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):  # a client hanging up is the usual end
            tracing.end_span(started, exc)
            started = None
        raise
    finally:
        if started is not None:
            started.set_attribute("conveyor.stream.frames", sent)
            tracing.end_span(started)

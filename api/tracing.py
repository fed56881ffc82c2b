"""Tracing for the web and events processes: Flask's requests as server spans, X-Trace-Id, streams.

`start(settings, process)` starts the process's exporter (infra/tracing.py)
before anything builds an engine or a Redis client; `instrument(app)` then
wraps the app with OpenTelemetry's maintained Flask instrumentation behind
an edge gate that decides head sampling once per request: an incoming W3C
`traceparent` is continued (its sampled flag followed), otherwise a trace
starts; only sampled requests meet the instrumentation, and every response
carries `X-Trace-Id`. Probes and /metrics are not traced. Both do nothing
while tracing is off.

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
# The client's handle on its request's trace; this very string heads each answer's
# headers, which gunicorn then passes unchecked (tuning/gunicorn_trusted_headers.py).
TRACE_ID = "X-Trace-Id"


def start(settings: Any, process: str) -> bool:
    """Start exporting this process's spans; False when tracing is off."""
    return tracing.configure(settings, process)


def instrument(app: Flask) -> None:
    """Server spans for `app`'s sampled requests (when tracing is on); see `EdgeGate`."""
    if not tracing.ACTIVE:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    plain = app.wsgi_app
    hooks = {id(f) for funcs in _hook_lists(app) for f in funcs}
    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.tracer_provider(),
        response_hook=_trace_id_header,
        excluded_urls=UNTRACED,
    )
    # The instrumentation's own request hooks run only on the sampled path.
    for funcs in _hook_lists(app):
        funcs[:] = [f if id(f) in hooks else _only_sampled(f) for f in funcs]
    app.wsgi_app = EdgeGate(plain, app.wsgi_app)  # type: ignore[method-assign]
    from tuning import gunicorn_trusted_headers

    # Micro-optimization: gunicorn's two regular expressions per header skip this one.
    gunicorn_trusted_headers.trust_leading(TRACE_ID)


def _hook_lists(app: Flask) -> list[list[Any]]:
    return [app.before_request_funcs.setdefault(None, []),
            app.teardown_request_funcs.setdefault(None, [])]  # fmt: skip


def _only_sampled(hook: Any) -> Any:
    def gated(*args: Any) -> Any:
        if tracing.in_sampled_request():
            return hook(*args)
        return None

    return gated


_UNTRACED_PATHS = frozenset(f"/{name}" for name in UNTRACED.split(","))


class EdgeGate:
    """Head sampling decided once per request, before any instrumentation.

    Sampled (1 in 100 at OTEL_TRACES_SAMPLER_ARG=0.01, or a caller's sampled
    `traceparent` under `parentbased_*`): the request goes through Flask's
    instrumented app and its trace is exported in full, web -> worker.
    Unsampled: it goes through the plain app, carrying only its traceparent
    (the caller's trace id, or a new one; flags 00) with the instrumentations
    suppressed: no span, no SDK object, no propagator on the way in, yet it
    answers with `X-Trace-Id` and its jobs' messages carry that `traceparent`,
    which puts the trace id in their status documents and log lines.
    """

    def __init__(self, plain: Any, instrumented: Any) -> None:
        self.plain, self.instrumented = plain, instrumented

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") in _UNTRACED_PATHS:
            return self.plain(environ, start_response)
        sampled, traceparent = tracing.head_sample(environ.get("HTTP_TRACEPARENT"))
        if sampled:
            with tracing.edge_sampled():
                return self.instrumented(environ, start_response)
        header = (TRACE_ID, traceparent[3:35])

        def answer(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers.insert(0, header)  # ahead of the trusted tail: see `_trace_id_header`
            return start_response(status, headers, *exc_info)

        token = tracing.unsampled(traceparent)
        try:
            return self.plain(environ, answer)
        finally:
            tracing.end_unsampled(token)


def _trace_id_header(span: Any, _status: str, response_headers: list[tuple[str, str]]) -> None:
    # The client's handle on its request's trace (the 202's, and every other answer's).
    # First, not last: every response ends with the fixed headers gunicorn passes
    # unchecked only while they are the list's tail (tuning/gunicorn_trusted_headers.py);
    # one appended after them had gunicorn check them all again, 2% of a submit's CPU.
    context = span.get_span_context()
    if context.is_valid:
        response_headers.insert(0, (TRACE_ID, f"{context.trace_id:032x}"))


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

"""OpenTelemetry tracing for every process: off by default, and then nothing of the SDK is imported.

`configure(settings, process)` sets up the SDK from the standard OTEL_*
variables (Settings): a TracerProvider whose BatchSpanProcessor exports
OTLP over HTTP/protobuf (or prints, `console`), the sampler of
OTEL_TRACES_SAMPLER[_ARG], W3C trace context, and the maintained
instrumentations for what Conveyor does not bypass: redis-py, httpx and
SQLAlchemy (every engine made after it, infra/db.py). The adapters add
theirs: Flask (api/tracing.py) and Celery (workers/tracing.py).

Until then `ACTIVE` is False and every helper here is one flag test: a
`span()` is a shared no-op context manager, `inject` writes nothing, so
tracing off costs nothing measurable (bench/tracing.py measures it).

Conveyor writes some things itself and gives them spans of their own: the
group-committed submit (a producer span per job, its context in the job's
message headers and row; the batch's flush), the fast publish, the batched
ledger postings, the AI upstream's plain HTTP calls, and event streams (a
span as long as the stream). Trace context travels as W3C `traceparent` /
`tracestate` message headers, on both brokers and every publish path.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

# Set by `configure`: whether this process records spans.
ACTIVE = False
_provider: Any = None
_pid: int | None = None
_NO_SPAN = contextlib.nullcontext()
_KINDS = ("internal", "server", "client", "producer", "consumer")
# W3C trace context, as message headers (and the upstream's HTTP headers).
TRACE_HEADERS = ("traceparent", "tracestate")
# The configured sampler (OTEL_TRACES_SAMPLER), asked once per request at the edge.
_head: Any = None
_IDS: Any = None  # the SDK's random trace and span ids, for the edge's unsampled requests
# True while a request the edge sampled runs its instrumented path: its root span is kept.
_EDGE_SAMPLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "conveyor_edge_sampled", default=False
)


def configure(settings: Any, process: str) -> bool:
    """Start exporting spans for `process` (web, events, worker, worker_ai, beat); idempotent.

    Call it after any fork (gunicorn's post_fork, Celery's worker_process_init):
    the exporter's thread belongs to the process that started it. False when
    tracing is off (OTEL_TRACES_EXPORTER unset or `none`).
    """
    global ACTIVE, _provider, _pid, _head, _IDS, _edge
    if not settings.tracing:
        return False
    if ACTIVE and _pid == os.getpid():
        return True
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    resource = Resource.create(
        {
            "service.name": settings.otel_service_name or f"conveyor-{process}",
            "service.namespace": "conveyor",
            "conveyor.process": process,
            "process.pid": os.getpid(),
        }
    )
    _head, _IDS, _edge = _sampler(settings), RandomIdGenerator(), _EdgeParts(settings)
    provider = TracerProvider(resource=resource, sampler=_edge_decided(_head))
    exporter = _otlp_exporter(settings) if settings.otel_traces_exporter == "otlp" else None
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter or ConsoleSpanExporter(),
            schedule_delay_millis=settings.otel_bsp_schedule_delay,
        )
    )
    if _provider is None:
        # For code that asks OpenTelemetry's global; Conveyor's own spans and the
        # instrumentations it sets up ask `tracer_provider()`, which follows forks.
        trace.set_tracer_provider(provider)
    # In a forked child the parent's provider (and its exporter thread) stays
    # behind: this process's spans go through its own from now on.
    _provider, _pid, ACTIVE = provider, os.getpid(), True
    _instrument_libraries()
    log.info("tracing: %s spans exported (%s)", process, settings.otel_traces_exporter)
    return True


def _sampler(settings: Any) -> Any:
    from opentelemetry.sdk.trace import sampling

    name, arg = settings.otel_traces_sampler, settings.otel_traces_sampler_arg
    ratio = float(arg) if arg else 1.0
    root = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }
    if name.startswith("parentbased_"):
        return sampling.ParentBased(root[name.removeprefix("parentbased_")])
    return root[name]


def _edge_decided(inner: Any) -> Any:
    """`inner`, except that the root span of a request the edge sampled is kept.

    The edge (`head_sample`) has already decided with a trace id of its own; the
    SDK would otherwise decide again for the server span's new trace id.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import sampling

    class EdgeDecided(sampling.Sampler):
        def should_sample(
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
            trace_state=None,
        ):  # fmt: skip
            if _EDGE_SAMPLED.get() and not (
                trace.get_current_span(parent_context).get_span_context().is_valid
            ):
                return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
            return inner.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"EdgeDecided{{{inner.get_description()}}}"

    return EdgeDecided()


def head_sample(traceparent: str | None) -> tuple[bool, str]:
    """Decide once, at the edge, whether a request's trace is sampled: (sampled, traceparent).

    Parent-based as configured: an incoming `traceparent` is asked to the
    sampler as the parent (its sampled flag decides under `parentbased_*`).
    Sampled, the instrumented path starts or continues the trace
    (`edge_sampled`) and the traceparent is "". Unsampled, it is the W3C
    traceparent (flags 00) of the request's trace: the caller's trace id or a
    new one, and a span id of its own. `unsampled(traceparent)` then runs the
    request with the instrumentations suppressed: it pays for no span, yet
    has a trace id to answer with and to pass on in its jobs' messages.
    """
    edge = _edge
    if traceparent:
        parent = extract({"traceparent": traceparent})
        caller = edge.get_current_span(parent).get_span_context()
        if caller.is_valid:
            trace_id = caller.trace_id
            sampled = _head.should_sample(parent, trace_id, "edge", edge.SERVER).decision
            if sampled.is_sampled():
                return True, ""
            return False, f"00-{trace_id:032x}-{_IDS.generate_span_id():016x}-00"
    trace_id = _IDS.generate_trace_id()
    if edge.sampled_root(trace_id):
        return True, ""
    return False, f"00-{trace_id:032x}-{_IDS.generate_span_id():016x}-00"


class _EdgeParts:
    """What `head_sample` uses, looked up once (it runs on every request)."""

    def __init__(self, settings: Any) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.instrumentation.utils import suppress_instrumentation
        from opentelemetry.sdk.trace import sampling

        self.get_current_span, self.SERVER = trace.get_current_span, trace.SpanKind.SERVER
        self.attach, self.detach = otel_context.attach, otel_context.detach
        # A context carrying suppress_instrumentation()'s flag, and nothing else:
        # redis-py's and SQLAlchemy's instrumentations make no span inside it.
        token = otel_context.attach(otel_context.Context())
        try:
            with suppress_instrumentation():
                self.suppressed = otel_context.get_current()
        finally:
            otel_context.detach(token)
        # A request without a traceparent is a root: the configured sampler's root
        # decision, taken as the SDK's samplers take it (TraceIdRatioBased: the
        # trace id's low 64 bits below the rate's bound), without building a
        # SamplingResult for each request. tests/api/test_tracing_gate.py checks
        # the edge's decisions against the SDK's sampler for the same trace ids.
        root = settings.otel_traces_sampler.removeprefix("parentbased_")
        if root == "traceidratio":
            arg = settings.otel_traces_sampler_arg
            bound = sampling.TraceIdRatioBased.get_bound_for_rate(float(arg) if arg else 1.0)
            limit = sampling.TraceIdRatioBased.TRACE_ID_LIMIT
            self.sampled_root = lambda trace_id: trace_id & limit < bound
        else:
            self.sampled_root = (lambda _id: True) if root == "always_on" else (lambda _id: False)


_edge: Any = None
# The traceparent (flags 00) of the unsampled request running in this context, or None.
_UNSAMPLED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_unsampled", default=None
)


@contextlib.contextmanager
def edge_sampled() -> Iterator[None]:
    """Around a sampled request's instrumented path: its root span is kept (`head_sample`)."""
    token = _EDGE_SAMPLED.set(True)
    try:
        yield
    finally:
        _EDGE_SAMPLED.reset(token)


# Whether the running request is one the edge sampled (inside `edge_sampled`): the
# context variable's own getter (twice a request, in the gated Flask hooks).
in_sampled_request = _EDGE_SAMPLED.get


def unsampled(traceparent: str) -> Any:
    """Run an unsampled request's work in this context: `traceparent` its trace, no span made.

    The instrumentations are suppressed; `inject`, `current_ids` and the
    spans' checks read `traceparent`. Returns the token for `end_unsampled`.
    """
    return _UNSAMPLED.set(traceparent), _edge.attach(_edge.suppressed)


def end_unsampled(token: Any) -> None:
    mine, otel = token
    _edge.detach(otel)
    _UNSAMPLED.reset(mine)


def suppressed() -> contextlib.AbstractContextManager[Any]:
    """No instrumentation's span inside the block (work of an unsampled trace)."""
    if not ACTIVE:
        return _NO_SPAN
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def _otlp_exporter(settings: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.otel_exporter_otlp_traces_endpoint or (
        f"{settings.otel_exporter_otlp_endpoint.rstrip('/')}/v1/traces"
        if settings.otel_exporter_otlp_endpoint
        else None  # the exporter's own default, http://localhost:4318/v1/traces
    )
    headers = dict(
        pair.strip().split("=", 1)
        for pair in settings.otel_exporter_otlp_headers.split(",")
        if "=" in pair
    )
    return OTLPSpanExporter(endpoint=endpoint, headers=headers or None)


def _tracer_provider() -> Any:
    return _provider


_instrumented = False


def _instrument_libraries() -> None:
    """Spans for redis-py, httpx and SQLAlchemy, from their maintained instrumentations."""
    global _instrumented
    if _instrumented:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    RedisInstrumentor().instrument(tracer_provider=_ForkSafe())
    HTTPXClientInstrumentor().instrument(tracer_provider=_ForkSafe())
    # Wraps sqlalchemy.create_engine: engines made from now on (infra/db.py) have SQL spans.
    # Its release declares sqlalchemy < 2.1 and would refuse 2.1.9; it only listens to
    # SQLAlchemy's public cursor events, unchanged in 2.1 (tests/integration/test_tracing.py
    # checks the SQL spans arrive).
    SQLAlchemyInstrumentor().instrument(tracer_provider=_ForkSafe(), skip_dep_check=True)
    _instrumented = True


class _ForkSafe:
    """A TracerProvider that hands out the current process's tracers (after a fork too)."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _LazyTracer(args, kwargs)


class _LazyTracer:
    """A tracer resolved on each use, so instrumentations made before a fork follow the child's."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self._args, self._kwargs = args, kwargs
        self._for: Any = None
        self._tracer: Any = None

    def _real(self) -> Any:
        # Micro-optimization: one tracer per process's provider, not one per span.
        provider = _provider
        if self._for is not provider:
            self._tracer, self._for = provider.get_tracer(*self._args, **self._kwargs), provider
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().start_as_current_span(*args, **kwargs)


def tracer_provider() -> Any:
    """The provider instrumentations should take (None when tracing is off)."""
    return _ForkSafe() if ACTIVE else None


def shutdown() -> None:
    """Export what is buffered and stop (a process, or a prefork child, on its way out)."""
    provider = _tracer_provider()
    if ACTIVE and provider is not None and _pid == os.getpid():
        provider.force_flush(timeout_millis=5000)
        provider.shutdown()


def flush() -> None:
    """Export what is buffered now (a prefork child before it is recycled)."""
    provider = _tracer_provider()
    if ACTIVE and provider is not None and _pid == os.getpid():
        provider.force_flush(timeout_millis=5000)


_OWN = _LazyTracer(("conveyor",), {})


def tracer() -> Any:
    """Conveyor's own tracer (the current process's)."""
    return _OWN._real()


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    links: list[Mapping[str, str]] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span around a block (the current one inside it); a no-op while tracing is off.

    `parent`: W3C headers (traceparent) to continue instead of the current
    context; `links`: other contexts this span relates to (a batch's jobs).
    """
    if not ACTIVE or (parent is None and _in_unsampled_trace()):
        return _NO_SPAN
    return _span(name, kind, attributes, parent, links)


def _in_unsampled_trace() -> bool:
    # Micro-optimization: a child of an unsampled span would be dropped; no span at all.
    if _UNSAMPLED.get() is not None:  # an unsampled request (the edge's)
        return True
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context.is_valid and not context.trace_flags.sampled


@contextlib.contextmanager
def _span(name, kind, attributes, parent, links) -> Iterator[Any]:
    from opentelemetry import trace

    context = extract(parent) if parent is not None else None
    with tracer().start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
        links=_links(links),
    ) as current:
        yield current


def start_span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    links: list[Mapping[str, str]] | None = None,
) -> Any:
    """A span the caller ends (`end_span`), not made current: one that outlives a block.

    None while tracing is off, and inside an unsampled trace (without `parent`).
    """
    if not ACTIVE or (parent is None and _in_unsampled_trace()):
        return None
    from opentelemetry import trace

    return tracer().start_span(
        name,
        context=extract(parent) if parent is not None else None,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
        links=_links(links),
    )


def start_producer(kind: str, headers: dict[str, Any]) -> Any:
    """The producer span of a `kind` job about to be published, its context put in `headers`.

    In an unsampled request (the edge's) `headers` get its traceparent and
    there is no span: None, as while tracing is off.
    """
    request_trace = _UNSAMPLED.get()
    if request_trace is not None:
        headers["traceparent"] = request_trace
        return None
    started = start_span(f"publish {kind}", kind="producer")
    inject(headers, within=started)  # None (an unsampled trace): the current context's
    return started


def end_span(started: Any, error: BaseException | None = None) -> None:
    if started is None:
        return
    if error is not None:
        started.record_exception(error)
    started.end()


def _links(contexts: list[Mapping[str, str]] | None) -> list[Any] | None:
    if not contexts:
        return None
    from opentelemetry import trace

    links = []
    for headers in contexts:
        span_context = trace.get_current_span(extract(headers)).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links


@contextlib.contextmanager
def within(headers: Mapping[str, Any]) -> Iterator[None]:
    """The block runs in the trace whose W3C `traceparent` `headers` carry (none: unchanged).

    For a publish through Celery, whose instrumentation injects the current
    context into the message's headers.
    """
    if not ACTIVE or not headers.get("traceparent"):
        yield
        return
    token = _edge.attach(extract(headers))
    try:
        yield
    finally:
        _edge.detach(token)


def extract(headers: Mapping[str, str]) -> Any:
    from opentelemetry.propagate import extract as otel_extract

    return otel_extract({k: v for k, v in headers.items() if k in TRACE_HEADERS and v})


def inject(headers: dict[str, Any], within: Any = None) -> dict[str, Any]:
    """Write the current span's (or `within`'s) traceparent/tracestate into `headers`."""
    if not ACTIVE:
        return headers
    if within is None:
        request_trace = _UNSAMPLED.get()
        if request_trace is not None:  # an unsampled request's (the edge's)
            headers["traceparent"] = request_trace
            return headers
    from opentelemetry import trace
    from opentelemetry.propagate import inject as otel_inject

    if within is None:
        current = trace.get_current_span().get_span_context()
        if current.is_valid and not current.trace_flags.sampled and not current.trace_state:
            # Micro-optimization: an unsampled trace's traceparent, without the propagators.
            headers["traceparent"] = f"00-{current.trace_id:032x}-{current.span_id:016x}-00"
            return headers

    context = trace.set_span_in_context(within) if within is not None else None
    otel_inject(headers, context=context)
    return headers


def context_of(started: Any) -> dict[str, str]:
    """`started`'s trace context as W3C headers ({} when there is none)."""
    return inject({}, within=started) if started is not None else {}


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`), or None."""
    if not traceparent or len(traceparent) != 55 or traceparent[2] != "-":
        return None
    return traceparent[3:35]


def is_sampled(traceparent: str | None) -> bool:
    """Whether a traceparent's flags say sampled (only those are worth keeping on the row)."""
    # The flags are a hex byte: 01 sampled, 02 a random trace id (the SDK's roots say 03).
    if trace_id_of(traceparent) is None:
        return False
    try:
        return bool(int(traceparent[53:], 16) & 1)  # type: ignore[index]
    except ValueError:
        return False


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, or None (off, or no span)."""
    if not ACTIVE:
        return None
    request_trace = _UNSAMPLED.get()
    if request_trace is not None:  # an unsampled request's: 00-<trace id>-<span id>-00
        return request_trace[3:35], request_trace[36:52]
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def with_trace_id(status: dict[str, Any], traceparent: str | None = None) -> dict[str, Any]:
    """`status` with `trace_id` (the traceparent's, else the current span's) when traced."""
    if not ACTIVE:
        return status
    trace_id = trace_id_of(traceparent) if traceparent else None
    if trace_id is None:
        ids = current_ids()
        trace_id = ids[0] if ids else None
    return {**status, "trace_id": trace_id} if trace_id else status


def log_fields() -> dict[str, str]:
    """trace_id and span_id for a log line written inside a span ({} otherwise)."""
    ids = current_ids()
    return {"trace_id": ids[0], "span_id": ids[1]} if ids else {}

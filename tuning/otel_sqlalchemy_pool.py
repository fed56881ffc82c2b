"""Speed: OpenTelemetry's SQLAlchemy instrumentation without its pool-usage counters.

Changes: on an engine the instrumentation has instrumented (tracing on,
infra/tracing.py), the four pool listeners it registers (connect, close,
checkout, checkin) are removed again with SQLAlchemy's `event.remove`. Its
SQL spans stay: the cursor-execute pair, the error hook and the `connect`
span are untouched.

Why: those listeners only feed `db.client.connections.usage`, a counter on
OpenTelemetry's global meter, and Conveyor sets no MeterProvider (its pool
gauges are its own, infra/metrics), so every one of them adds to a no-op.
Yet each checkout and checkin runs two of them, each asking
`is_instrumentation_enabled()`: 24k instructions per submit where each submit
is its own flush, about 4k under gunicorn, where a flush carries several
(docs/tracing.md, "Counted in instructions").

Written against: opentelemetry-instrumentation-sqlalchemy 0.66b1, whose
`EngineTracer` keeps each listener it registers as (weakref to the engine,
event name, function) in its class-level `_remove_event_listener_params`
(read here, and the removed entries taken out, so its `uninstrument()` does
not remove them twice); sqlalchemy 2.1.9 (`event.remove`, `event.contains`).
Breaks: tests/tuning/test_otel_sqlalchemy_pool.py (an engine made under the
real instrumentation loses exactly its pool listeners and still traces SQL).
Off: `CONVEYOR_TUNING=-otel_sqlalchemy_pool` (or `off`).
"""

from __future__ import annotations

from typing import Any

POOL_EVENTS = frozenset({"connect", "close", "checkout", "checkin"})


def install(engine: Any) -> bool:
    """Take the instrumentation's pool listeners off `engine`; False when it has none to take."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from sqlalchemy import event

    from tuning import registry

    registered = getattr(EngineTracer, "_remove_event_listener_params", None)
    if not isinstance(registered, list):
        registry.refused("otel_sqlalchemy_pool", "EngineTracer keeps no listener list")
        return False
    mine = [
        entry
        for entry in registered
        if isinstance(entry, tuple) and len(entry) == 3
        and callable(entry[0]) and entry[0]() is engine and entry[1] in POOL_EVENTS
    ]  # fmt: skip
    if {identifier for _ref, identifier, _fn in mine} != POOL_EVENTS:
        registry.refused("otel_sqlalchemy_pool", "the engine's pool listeners are not all listed")
        return False
    for entry in mine:
        _ref, identifier, listener = entry
        if event.contains(engine, identifier, listener):
            event.remove(engine, identifier, listener)
        registered.remove(entry)
    return True

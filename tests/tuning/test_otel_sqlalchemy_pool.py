"""tuning/otel_sqlalchemy_pool.py against the real instrumentation, in a process that traces.

Two engines made by infra/db.create_db_engine on the test PostgreSQL under
OpenTelemetry's SQLAlchemy instrumentation, one with the adjustment and one
without: the adjusted engine has lost exactly the instrumentation's pool
listeners, and both export the same spans for the same work.
"""

from __future__ import annotations

import json
import subprocess
import sys

from infra.settings import ROOT
from tests.support.environment import process_environment

PROBE = """
import json, sys
from opentelemetry import metrics
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import event, text
from infra import db, tracing
from infra.settings import Settings
import tuning

env = {"DATABASE_URL": sys.argv[1], "OTEL_TRACES_EXPORTER": "console",
       "OTEL_BSP_SCHEDULE_DELAY": "60000"}
tracing.configure(Settings.from_env(env), "web")
memory = InMemorySpanExporter()
tracing._provider.add_span_processor(SimpleSpanProcessor(memory))
engines = {
    "tuned": db.create_db_engine(Settings.from_env(env)),
    "stock": db.create_db_engine(
        Settings.from_env({**env, "CONVEYOR_TUNING": "-otel_sqlalchemy_pool"})),
}
answer = {"state": tuning.STATE.get("otel_sqlalchemy_pool"), "engines": {}}
for name, engine in engines.items():
    listed = [(ident, fn) for ref, ident, fn in EngineTracer._remove_event_listener_params
              if ref() is engine]
    memory.clear()
    with tracing.span("probe"):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar()
    answer["engines"][name] = {
        "listed": sorted(ident for ident, _fn in listed),
        "listening": sorted(ident for ident, fn in listed if event.contains(engine, ident, fn)),
        "pool_listeners": {e: len(getattr(engine.pool.dispatch, e)) for e in
                           ("connect", "close", "checkout", "checkin")},
        "spans": sorted(s.name for s in memory.get_finished_spans()),
    }
# Why the listeners can go: the counter they feed is on the global meter, which is no SDK's.
answer["meter_provider"] = type(metrics.get_meter_provider()).__module__
SQLAlchemyInstrumentor().uninstrument()  # after the adjustment, without an error
print("ANSWER " + json.dumps(answer))
"""


def test_pool_listeners_go_and_the_sql_spans_stay(database_url):
    env = {k: v for k, v in process_environment().items() if not k.startswith("OTEL_")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, database_url], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    line = next(x for x in run.stdout.splitlines() if x.startswith("ANSWER "))
    answer = json.loads(line.removeprefix("ANSWER "))
    tuned, stock = answer["engines"]["tuned"], answer["engines"]["stock"]
    pool_events = ["checkin", "checkout", "close", "connect"]
    # Stock: the instrumentation listens to the pool's four events, and lists them.
    assert [e for e in stock["listening"] if e in pool_events] == pool_events
    # Tuned: those four are gone, from the engine and from the instrumentation's list;
    # its SQL listeners are still there.
    assert answer["state"] == "on"
    assert not set(tuned["listed"]) & set(pool_events)
    assert set(tuned["listening"]) == set(stock["listening"]) - set(pool_events)
    assert {"before_cursor_execute", "after_cursor_execute"} <= set(tuned["listening"])
    # Nothing else was taken: the pool keeps every listener that is not the instrumentation's.
    for event_name, count in stock["pool_listeners"].items():
        assert tuned["pool_listeners"][event_name] == count - 1, event_name
    # The same spans for the same work: the probe, the connect and the SELECT.
    assert tuned["spans"] == stock["spans"]
    assert "SELECT" in " ".join(tuned["spans"]) and "connect" in tuned["spans"]
    assert not answer["meter_provider"].startswith("opentelemetry.sdk")

"""Tracing: off, nothing of the SDK loaded; on, its settings checked and log lines naming spans."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from infra.settings import ROOT, ConfigError, Settings
from tests.support.environment import process_environment

PROBE = """
import sys
from infra.settings import Settings
from api import create_app
from workers.factory import create_celery_app, wire_process
app = create_app(Settings.from_env())
celery = create_celery_app(Settings.from_env())
wire_process(celery.conf.conveyor_settings)
# redis-py 8 imports OpenTelemetry's metrics SDK itself when it is installed (its own
# opt-in metrics, never turned on here)
# (which pulls in the tracing API's modules for exemplars); the tracing SDK, the exporter and
# the instrumentations are Conveyor's to load, and stay unloaded.
ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter",
        "opentelemetry.propagate")
loaded = sorted(m for m in sys.modules if m.startswith(ours))
print(",".join(loaded))
"""


def test_tracing_off_imports_nothing_of_opentelemetrys_tracing():
    env = {k: v for k, v in process_environment().items() if not k.startswith("OTEL_")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == ""  # the names of what was loaded: none


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, "SAMPLER"),
    ],
)
def test_tracing_settings_that_cannot_work_are_refused(variables, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(variables)


def test_off_unless_an_exporter_is_named():
    assert not Settings.from_env({}).tracing
    assert not Settings.from_env({"OTEL_TRACES_EXPORTER": "none"}).tracing
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}).tracing


LOG_PROBE = """
from infra import logging_setup, tracing
from infra.settings import Settings
settings = Settings.from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "9999"})
logging_setup.configure_logging(settings)
import logging
tracing.configure(settings, "probe")
with tracing.span("probe span"):
    ids = tracing.current_ids()
    logging.getLogger("probe").warning("inside")
logging.getLogger("probe").warning("outside")
print("IDS", ids[0], ids[1])
"""


def test_log_lines_inside_a_span_carry_its_trace_and_span_ids():
    env = {k: v for k, v in process_environment().items() if not k.startswith("OTEL_")}
    probe = subprocess.run(
        [sys.executable, "-c", LOG_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    marker = next(line for line in probe.stdout.splitlines() if line.startswith("IDS "))
    trace_id, span_id = marker.split()[1:]
    lines = [json.loads(line) for line in io.StringIO(probe.stderr) if line.startswith("{")]
    inside = next(line for line in lines if line["message"] == "inside")
    outside = next(line for line in lines if line["message"] == "outside")
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    assert "trace_id" not in outside

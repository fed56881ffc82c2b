"""The edge's head sampling (api/tracing.EdgeGate), in a process of its own that traces.

A real Flask app instrumented as the web is, the real SDK exporting to the
console: an unsampled request never meets the instrumentations (no span, the
library instrumentations suppressed) yet answers with its trace id; a sampled
one is exported whole under the trace id it answered with.
"""

from __future__ import annotations

import json
import subprocess
import sys

from infra.settings import ROOT
from tests.support.environment import process_environment

PROBE = """
import json, sys
from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import sampling
from api import tracing as api_tracing
from infra import tracing
from infra.settings import Settings
import gunicorn.http.wsgi
from tuning import gunicorn_trusted_headers

gunicorn_trusted_headers.install()
# The fixed headers every response ends with, which gunicorn then passes unchecked
# (api/observability.py appends them; tuning/gunicorn_trusted_headers.py).
FIXED = gunicorn_trusted_headers.trust([("X-Content-Type-Options", "nosniff"),
                                        ("X-Frame-Options", "DENY")])
assert len(FIXED) == 2
TAILS = []

class Fixed:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start(status, headers, *exc_info):
            headers.extend(FIXED)
            return start_response(status, headers, *exc_info)
        return self.app(environ, start)

class Tail:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start(status, headers, *exc_info):
            TAILS.append(len(headers) > 2 and all(a is b for a, b in zip(headers[-2:], FIXED)))
            return start_response(status, headers, *exc_info)
        return self.app(environ, start)

settings = Settings.from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "60000",
                              "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                              "OTEL_TRACES_SAMPLER_ARG": "0.5"})
tracing.configure(settings, "web")
app = Flask("probe")

@app.post("/submit")
def submit():
    headers = {}
    started = tracing.start_producer("job", headers)  # as api/dispatch.submit
    tracing.end_span(started)
    return jsonify(recording=trace.get_current_span().is_recording(),
                   instrumented=is_instrumentation_enabled(), headers=headers,
                   ids=tracing.current_ids())

app.wsgi_app = Fixed(app.wsgi_app)
api_tracing.instrument(app)
app.wsgi_app = Tail(app.wsgi_app)
client = app.test_client()
answers = []
for i in range(200):
    response = client.post("/submit")
    trace_id = int(response.headers["X-Trace-Id"], 16)
    sdk = sampling.TraceIdRatioBased(0.5).should_sample(None, trace_id, "root").decision
    answers.append({"trace_id": response.headers.get_all("X-Trace-Id"), **response.json,
                    "sdk_sampled": sdk.is_sampled(), "trusted_tail": TAILS[-1]})
for flags, trace_id in (("00", "ab" * 16), ("01", "ef" * 16)):
    parent = f"00-{trace_id}-{'cd' * 8}-{flags}"
    response = client.post("/submit", headers={"traceparent": parent})
    answers.append({"trace_id": response.headers.get_all("X-Trace-Id"), **response.json,
                    "trusted_tail": TAILS[-1]})
trace.get_tracer_provider().force_flush()
sys.stdout.flush()
print("ANSWERS " + json.dumps(answers))
"""


def _probe() -> tuple[list[dict], list[dict]]:
    env = {k: v for k, v in process_environment().items() if not k.startswith("OTEL_")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    marker = next(line for line in run.stdout.splitlines() if line.startswith("ANSWERS "))
    printed = run.stdout[: run.stdout.index("ANSWERS ")]
    decoder, spans, at = json.JSONDecoder(), [], printed.find("{")
    while at != -1:
        span, end = decoder.raw_decode(printed, at)
        spans.append(span)
        at = printed.find("{", end)
    return json.loads(marker.removeprefix("ANSWERS ")), spans


def test_head_sampling_is_decided_once_at_the_edge():
    answers, spans = _probe()
    roots, caller_unsampled, caller_sampled = answers[:200], answers[200], answers[201]
    exported = {}
    for span in spans:
        exported.setdefault(span["context"]["trace_id"].removeprefix("0x"), []).append(span)
    sampled = [a for a in roots if a["recording"]]
    unsampled = [a for a in roots if not a["recording"]]
    # About half at 0.5, and each decision kept: the SDK does not decide again.
    assert 60 < len(sampled) < 140
    # The edge decides a root as the SDK's sampler does for the same trace id (a
    # sampled request answers with its server span's, which the SDK keeps).
    assert not any(a["sdk_sampled"] for a in unsampled)
    for answer in sampled:
        (trace_id,) = answer["trace_id"]
        names = sorted(s["name"] for s in exported[trace_id])
        assert names == ["POST /submit", "publish job"]
        assert answer["headers"]["traceparent"].split("-")[1] == trace_id
        assert answer["ids"][0] == trace_id
    assert len(exported) == len(sampled) + 1  # and the sampled caller's, below
    # Unsampled: nothing instrumented, nothing exported, yet a trace id to answer
    # with and to pass on (flags 00) in the job's message.
    for answer in [*unsampled, caller_unsampled]:
        (trace_id,) = answer["trace_id"]
        assert not answer["instrumented"] and trace_id not in exported
        assert answer["headers"]["traceparent"].split("-")[1] == trace_id
        assert answer["headers"]["traceparent"].endswith("-00")
        # Log lines and status documents name it too (infra/tracing.current_ids).
        assert answer["ids"] == answer["headers"]["traceparent"].split("-")[1:3]
    # Parent-based: the caller's decision is followed, its trace continued.
    assert caller_unsampled["trace_id"] == ["ab" * 16]
    assert caller_sampled["trace_id"] == ["ef" * 16] and caller_sampled["recording"]
    assert sorted(s["name"] for s in exported["ef" * 16]) == ["POST /submit", "publish job"]
    # X-Trace-Id goes ahead of the fixed headers, sampled or not: gunicorn passes
    # them unchecked only while they end the list (one after them had it check all).
    assert all(answer["trusted_tail"] for answer in answers)

"""Tracing's cost: submit and drain with tracing off, on at 100% sampling, and on at 1%.

Each configuration gets its own web (gunicorn, as the Procfile runs it) and
its own prefork ledger worker, exporting OTLP/HTTP to a sink on loopback that
accepts and discards (a collector's receive cost is not Conveyor's). The
figures are the submit rate (wrk, rotating over many users' tokens, the
worker stopped) and the drain rate (N jobs queued, then one worker drains
them), reported as ratios against tracing off in the same run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.client import ApiClient, login, submit_many
from bench.report import Figure
from bench.stack import tree_cpu_seconds, wait_http
from bench.users import create_users

SECTION = "Tracing (OpenTelemetry)"
# (label, the variables a deployment sets): off is today's default.
CONFIGS = (
    ("off", {}),
    ("on, 100% sampled", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}),
    (
        "on, 1% sampled",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
)
CREDIT = {"type": "credit", "amount": 100, "description": "bench"}


@contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that answers 200 and keeps nothing."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def measure(bench: Any, run_id: str, password: str, drain_jobs: int) -> list[tuple]:
    """Run the three configurations; the ratios for the report (traced / off)."""
    submits: dict[str, Figure] = {}
    drains: dict[str, Figure] = {}
    with otlp_sink() as sink:
        for index, (label, variables) in enumerate(CONFIGS):
            env = {**bench.env, **variables}
            if variables:
                env.update(
                    OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_ENDPOINT=sink,
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                )
            print(f"tracing {label}")
            name = f"web-tracing-{index}"
            base = bench.start_web(name, "api.wsgi:app", env)
            submitters = create_users(env, f"bench_{run_id}_t{index}_", 300)
            script = bench.script(
                f"submit-tracing-{index}",
                ["/api/v1/transactions"],
                method="POST",
                body='{"type": "credit", "amount": 100, "description": "bench"}',
                headers={"Content-Type": "application/json"},
                tokens=submitters,
            )
            submits[label] = bench.load(SECTION, f"submit, tracing {label}", base, script)
            bench.purge("ledger")
            client = ApiClient(base)
            client.token = login(client, f"bench_{run_id}_t{index}", password)
            drains[label] = _drain(bench, client, env, label, index, drain_jobs)
            bench.procs.stop(name)
    off_submit, off_drain = submits["off"], drains["off"]
    # Rates move with whatever else the machine runs; CPU per request (or job)
    # holds up better: as work per CPU-second, the ratios below < 1 are the cost.
    per_cpu = {
        (kind, label): _per_cpu(figure)
        for kind, figures in (("submit", submits), ("drain", drains))
        for label, figure in figures.items()
    }
    ratios = []
    for kind, figures, off in (("submit", submits, off_submit), ("drain", drains, off_drain)):
        for label, _ in CONFIGS[1:]:
            ratios.append((f"{kind} rate, tracing {label} / off", figures[label], off))
            ratios.append(
                (f"{kind} per CPU-second, tracing {label} / off", per_cpu[(kind, label)],
                 per_cpu[(kind, "off")])
            )  # fmt: skip
    return ratios


def _per_cpu(figure: Figure) -> Figure:
    rate = 1000 / figure.cpu_ms if figure.cpu_ms else None
    return Figure(figure.section, f"{figure.name} per CPU-second", rate, "per CPU s")


def _drain(bench: Any, client: ApiClient, env: dict, label: str, index: int, n: int) -> Figure:
    ids = submit_many(client, "/api/v1/transactions", [CREDIT] * n)
    name = f"worker-tracing-{index}"
    concurrency = bench.options.ledger_concurrency or 2
    bench.start_worker(name, "prefork", "ledger,maintenance", concurrency, env=_only_otel(env))
    pid = bench.procs.pid(name)
    before = tree_cpu_seconds(pid)
    bench.wait_terminal(ids, timeout=max(120.0, n / 20))
    cpu = tree_cpu_seconds(pid) - before
    succeeded, _terminal, seconds = bench.job_window(ids)
    rate = succeeded / seconds if seconds else None
    figure = Figure(
        SECTION, f"drain, tracing {label}", rate, "jobs/s",
        note=f"{n} jobs, prefork -c {concurrency}", cpu_ms=cpu * 1000 / n,
    )  # fmt: skip
    bench.figures.append(figure)
    print(f"  drained {succeeded}/{n} in {seconds:.1f} s: {rate or 0:,.0f} jobs/s")
    bench.procs.stop(name)
    return figure


def _only_otel(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


__all__ = ["measure", "otlp_sink", "wait_http"]

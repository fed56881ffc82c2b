"""Tracing's cost: submit and drain with tracing off, on at 100% sampling, and on at 1%.

Each configuration gets its own web (gunicorn, as the Procfile runs it) and
its own prefork ledger worker, exporting OTLP/HTTP to a sink on loopback that
accepts and discards (a collector's receive cost is not Conveyor's). The
figures are the submit rate (wrk, rotating over many users' tokens, no worker
running) and the drain rate (N jobs queued for a ready worker held stopped,
then drained), reported as ratios against tracing off in the same run. The
configurations take turns, round after round, and each figure is the median
of its rounds: a configuration measured after another meets a bigger
database and a warmer machine, and an earlier version of this page, which
ran them one after another, blamed tracing for some of that.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench import wrk
from bench.client import ApiClient, login, submit_many, wait_until
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
    """Run the three configurations, interleaved; the ratios for the report (traced / off).

    All three webs run side by side and take turns, round after round (the
    order reversed each round), so the database's and Redis's growth and
    whatever else the machine does fall on each configuration alike; each
    figure is the median of its rounds (`--repeat`, at least 5: a round's
    CPU per request moves by ±5% on a shared machine, the cost measured is 3-5%).
    """
    rounds = max(5, bench.options.repeat)
    submits: dict[str, list[tuple[Any, float]]] = {label: [] for label, _ in CONFIGS}
    drains: dict[str, list[Figure]] = {label: [] for label, _ in CONFIGS}
    with otlp_sink() as sink:
        envs, bases, scripts, clients = {}, {}, {}, {}
        for index, (label, variables) in enumerate(CONFIGS):
            env = {**bench.env, **variables}
            if variables:
                env.update(
                    OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_ENDPOINT=sink,
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                )
            envs[label] = env
            bases[label] = bench.start_web(f"web-tracing-{index}", "api.wsgi:app", env)
            scripts[label] = bench.script(
                f"submit-tracing-{index}",
                ["/api/v1/transactions"],
                method="POST",
                body='{"type": "credit", "amount": 100, "description": "bench"}',
                headers={"Content-Type": "application/json"},
                tokens=create_users(env, f"bench_{run_id}_t{index}_", 300),
            )
            client = ApiClient(bases[label])
            client.token = login(client, f"bench_{run_id}_t{index}", password)
            clients[label] = client
        # Each measured run warms its web up first (`_submit`).
        for round_ in range(rounds):
            order = list(enumerate(CONFIGS)) if round_ % 2 == 0 else list(enumerate(CONFIGS))[::-1]
            print(f"tracing round {round_ + 1}/{rounds}")
            for _index, (label, _) in order:
                submits[label].append(_submit(bench, bases[label], scripts[label], label))
            # The submits above are not drained (no worker ran): off the broker before a drain.
            bench.purge("ledger")
            for index, (label, _) in order:
                drains[label].append(
                    _drain(bench, clients[label], envs[label], label, index, drain_jobs)
                )
        for index, _ in enumerate(CONFIGS):
            bench.procs.stop(f"web-tracing-{index}")
    submit_figures = {label: _median_submit(label, runs) for label, runs in submits.items()}
    drain_figures = {label: _median_drain(label, runs) for label, runs in drains.items()}
    bench.figures.extend([*submit_figures.values(), *drain_figures.values()])
    # Rates move with whatever else the machine runs; CPU per request (or job)
    # holds up better: as work per CPU-second, the ratios below < 1 are the cost.
    ratios = []
    for kind, figures in (("submit", submit_figures), ("drain", drain_figures)):
        off = figures["off"]
        for label, _ in CONFIGS[1:]:
            ratios.append((f"{kind} rate, tracing {label} / off", figures[label], off))
            ratios.append(
                (f"{kind} per CPU-second, tracing {label} / off", _per_cpu(figures[label]),
                 _per_cpu(off))
            )  # fmt: skip
    return ratios


def _submit(bench: Any, base: str, script: Any, label: str) -> tuple[Any, float]:
    """One wrk run against `base`: (wrk's result, the web's CPU ms per request).

    After a warm-up of its own: what ran just before (another configuration's
    exporter catching up, the drains' writes settling in PostgreSQL) falls on
    the warm-up, not on the run measured.
    """
    opts = bench.options
    pid = bench.procs.pid(bench.servers[base])
    wrk.run(base, script, duration=opts.warmup, connections=opts.connections, threads=opts.threads)
    before = tree_cpu_seconds(pid)
    result = wrk.run(base, script, duration=opts.duration, connections=opts.connections,
                     threads=opts.threads)  # fmt: skip
    cpu_ms = (tree_cpu_seconds(pid) - before) * 1000 / max(1, result.requests)
    print(f"  submit, tracing {label}: {result.requests_per_second:,.0f} req/s, "
          f"web CPU {cpu_ms:.3f} ms/req")  # fmt: skip
    return result, cpu_ms


def _median_submit(label: str, runs: list[tuple[Any, float]]) -> Figure:
    by_rate = sorted(runs, key=lambda run: run[0].requests_per_second)
    median, _cpu = by_rate[len(by_rate) // 2]
    errors = sum(result.errors for result, _ in runs)
    return Figure(
        SECTION, f"submit, tracing {label}", median.requests_per_second,
        p50_ms=median.p50_ms, p99_ms=median.p99_ms,
        note=f"median of {len(runs)} interleaved rounds" + (f"; {errors} errors" if errors else ""),
        runs=[result.requests_per_second for result, _ in runs],
        cpu_ms=statistics.median(cpu for _, cpu in runs),
    )  # fmt: skip


def _median_drain(label: str, runs: list[Figure]) -> Figure:
    rates = [run.rate or 0.0 for run in runs]
    return Figure(
        SECTION, f"drain, tracing {label}", statistics.median(rates), "jobs/s",
        note=f"{runs[0].note}; median of {len(runs)} interleaved rounds", runs=rates,
        cpu_ms=statistics.median(run.cpu_ms or 0.0 for run in runs),
    )  # fmt: skip


def _per_cpu(figure: Figure) -> Figure:
    rate = 1000 / figure.cpu_ms if figure.cpu_ms else None
    return Figure(figure.section, f"{figure.name} per CPU-second", rate, "per CPU s")


def _drain(bench: Any, client: ApiClient, env: dict, label: str, index: int, n: int) -> Figure:
    """N jobs drained by a prefork worker started and ready before they are queued.

    The worker is stopped (SIGSTOP) while they are queued and counted from
    its SIGCONT: its start-up (tracing's included) is not in the CPU per job.
    """
    name = f"worker-tracing-{index}"
    concurrency = bench.options.ledger_concurrency or 2
    bench.start_worker(name, "prefork", "ledger,maintenance", concurrency, env=_only_otel(env))
    pid = bench.procs.pid(name)
    slots = f"{bench.prefix}fair:ledger:slots"
    if not wait_until(
        lambda: any(field.startswith(f"{name}@") for field in bench.redis.hkeys(slots)), 60.0
    ):
        bench.procs.check_alive(name)
        raise RuntimeError(f"{name} did not advertise its ledger slots within 60 s")
    time.sleep(1.0)  # the pool's children finish their start-up (tracing's exporter)
    os.killpg(pid, signal.SIGSTOP)
    try:
        ids = submit_many(client, "/api/v1/transactions", [CREDIT] * n)
        before = tree_cpu_seconds(pid)
    finally:
        os.killpg(pid, signal.SIGCONT)
    bench.wait_terminal(ids, timeout=max(120.0, n / 20))
    cpu = tree_cpu_seconds(pid) - before
    succeeded, _terminal, seconds = bench.job_window(ids)
    rate = succeeded / seconds if seconds else None
    figure = Figure(
        SECTION, f"drain, tracing {label}", rate, "jobs/s",
        note=f"{n} jobs, prefork -c {concurrency}", cpu_ms=cpu * 1000 / n,
    )  # fmt: skip
    print(f"  drain, tracing {label}: {succeeded}/{n} in {seconds:.1f} s, {rate or 0:,.0f} jobs/s, "
          f"worker CPU {cpu * 1000 / n:.3f} ms/job")  # fmt: skip
    bench.procs.stop(name)
    return figure


def _only_otel(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


__all__ = ["measure", "otlp_sink", "wait_http"]

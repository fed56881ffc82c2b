"""Fair share (issue 24): a small user's AI job under a flood, against idle and against FIFO.

The Procfile's worker_ai shape at concurrency 20 (gevent, prefetch 4), a
0.5 s upstream. A flood of 400 AI jobs (~10 s of work) comes from 8 users
(50 each) or from 100 users (4 each); then a ninth (or 101st) user submits
one. Its submit->SUCCESS (the row's created_at to finished_at) is compared
with the same job on an idle system. The 8-user flood runs once more with
fair share opened wide (`FAIR_WINDOW_AI` = 10**9: every job released to the
broker at submit, plain FIFO, as before issue 24), on a web and worker of its
own: the small job's wait there, and the flood's drain time fair / FIFO,
show what fairness costs. Medians over three floods (or `--repeat`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.client import ApiClient, wait_until
from bench.report import Figure
from bench.users import create_users

SECTION = "Fair share: a small user's AI job under a flood (worker_ai -c 20, 0.5 s upstream)"
FLOOD = 400
CONCURRENCY = 20
UPSTREAM_SECONDS = 0.5
FIFO_ENV = {"FAIR_WINDOW_AI": str(10**9)}
# Floods per configuration (or --repeat, if more): the figures are their medians.
FLOODS = 3


def _body() -> dict[str, Any]:
    # A unique prompt each: no job is answered from the response cache.
    return {"kind": "text", "prompt": f"fair bench {uuid.uuid4().hex}", "options": {}}


def _latency(bench: Any, job_id: str) -> float:
    ((seconds,),) = bench.db.query(
        "SELECT EXTRACT(EPOCH FROM finished_at - created_at) FROM jobs WHERE id = %s::uuid",
        (job_id,),
    )
    return float(seconds)


def _one(bench: Any, small: ApiClient) -> float:
    job_id = small.expect("POST", "/api/v1/ai/generate", _body(), 202)["task_id"]
    bench.wait_terminal([job_id], timeout=120)
    return _latency(bench, job_id)


def _flood(busy: list[ApiClient]) -> list[str]:
    """FLOOD jobs shared out over the busy users, submitted from 8 connections."""
    per_user = FLOOD // len(busy)
    jobs = [client for client in busy for _ in range(per_user)]

    def one(client: ApiClient) -> str:
        return client.expect("POST", "/api/v1/ai/generate", _body(), 202)["task_id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, jobs))


class _Pass:
    """One configuration's runs: the small job idle and under the flood, the flood's drain."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.idle: list[float] = []
        self.flooded: list[float] = []
        self.drains: list[float] = []

    def run(self, bench: Any, busy: list[ApiClient], small: ApiClient) -> None:
        self.idle.append(_one(bench, small))
        started = time.monotonic()
        flood = _flood(busy)
        self.flooded.append(_one(bench, small))
        bench.wait_terminal(flood, timeout=300)
        self.drains.append(time.monotonic() - started)
        print(
            f"  {self.label}: idle {self.idle[-1]:.2f} s, under the flood {self.flooded[-1]:.2f} s,"
            f" flood drained in {self.drains[-1]:.1f} s"
        )

    def figures(self) -> tuple[Figure, Figure, Figure]:
        return (
            _median_ms(f"{self.label}: small user's job under the flood, submit to SUCCESS",
                       self.flooded),
            _median_ms(f"{self.label}: the same job, idle system", self.idle),
            _median_ms(f"{self.label}: the flood's drain, first submit to last end", self.drains),
        )  # fmt: skip


def _with_worker(bench: Any, name: str, env: dict[str, str] | None, body) -> None:
    bench.start_worker(name, "gevent", "ai", CONCURRENCY, ("--prefetch-multiplier", "4"), env=env)
    slots = f"{bench.prefix}fair:ai:slots"
    # Its advertised slots: the gate's window follows this worker from here on.
    wait_until(
        lambda: any(field.startswith(f"{name}@") for field in bench.redis.hkeys(slots)),
        60,
        interval=0.1,
    )
    try:
        body()
    finally:
        bench.procs.stop(name)


def measure(bench: Any, base: str, run_id: str) -> list[tuple[str, Figure | None, Figure | None]]:
    """The ratios for the report: under the flood / idle, fair drain / FIFO drain."""
    if bench.upstream is None:
        return []
    print(f"fair share: {FLOOD} AI jobs from 8 and from 100 users, then one more user's; FIFO")
    tokens = create_users(bench.env, f"fair_{run_id}_", 100 + 1)
    clients = [ApiClient(base, token) for token in tokens]
    small = clients[-1]
    eight, hundred, fifo = _Pass("8 users"), _Pass("100 users"), _Pass("8 users, FIFO")
    fifo_base = bench.start_web("web-fifo", "api.wsgi:app", {**bench.env, **FIFO_ENV})
    fifo_clients = [ApiClient(fifo_base, token) for token in tokens]
    latency, bench.upstream.latency = bench.upstream.latency, UPSTREAM_SECONDS
    try:
        for _ in range(max(FLOODS, bench.options.repeat)):

            def fair_floods() -> None:
                eight.run(bench, clients[:8], small)
                hundred.run(bench, clients[:100], small)

            _with_worker(bench, "worker-ai-fair", None, fair_floods)
            _with_worker(
                bench,
                "worker-ai-fifo",
                FIFO_ENV,
                lambda: fifo.run(bench, fifo_clients[:8], fifo_clients[-1]),
            )
    finally:
        bench.procs.stop("web-fifo")
        bench.upstream.latency = latency
    under8, idle8, drain8 = eight.figures()
    under100, idle100, _ = hundred.figures()
    under_fifo, idle_fifo, drain_fifo = fifo.figures()
    bench.figures += [under8, idle8, drain8, under100, idle100, under_fifo, idle_fifo, drain_fifo]
    return [
        ("small user's AI job under 8 users' flood / idle (goal <= 2)", under8, idle8),
        ("small user's AI job under 100 users' flood / idle (goal <= 2)", under100, idle100),
        ("the same with FIFO (fair share opened wide) / idle", under_fifo, idle_fifo),
        ("8 users' flood drain, fair / FIFO (goal <= 1.1)", drain8, drain_fifo),
    ]


def _median_ms(name: str, seconds: list[float]) -> Figure:
    """A figure of the median of `seconds`, in milliseconds, with every run."""
    return Figure(
        SECTION, name, statistics.median(seconds) * 1000, "ms", runs=[s * 1000 for s in seconds]
    )

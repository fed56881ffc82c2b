"""Fair share (issue 24): a small user's AI job under 8 busy users' flood, against an idle system.

The Procfile's worker_ai shape at concurrency 20 (gevent, prefetch 4), a
0.5 s upstream: 8 users queue 50 AI jobs each (~10 s of work), then a ninth
user submits one. Its submit→SUCCESS (the row's created_at to finished_at)
is compared with the same job on an idle system; medians over `repeat`
floods. Without fair share it waited behind the whole flood (19x idle).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench.client import ApiClient, submit_many, wait_until
from bench.report import Figure
from bench.users import create_users

SECTION = "Fair share: a small user's AI job under a flood (worker_ai -c 20, 0.5 s upstream)"
BUSY_USERS = 8
FLOOD_PER_USER = 50
CONCURRENCY = 20
UPSTREAM_SECONDS = 0.5


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


def measure(bench: Any, base: str, run_id: str) -> tuple[Figure | None, Figure | None]:
    """(the small job under the flood, the same job idle): seconds, medians."""
    if bench.upstream is None:
        return None, None
    print(f"fair share: {BUSY_USERS} users x {FLOOD_PER_USER} AI jobs, then one more user's")
    tokens = create_users(bench.env, f"fair_{run_id}_", BUSY_USERS + 1)
    busy = [ApiClient(base, token) for token in tokens[:BUSY_USERS]]
    small = ApiClient(base, tokens[-1])
    latency, bench.upstream.latency = bench.upstream.latency, UPSTREAM_SECONDS
    bench.start_worker(
        "worker-ai-fair", "gevent", "ai", CONCURRENCY, ("--prefetch-multiplier", "4")
    )
    slots = f"{bench.prefix}fair:ai:slots"
    wait_until(lambda: bench.redis.hlen(slots) > 0, 60, interval=0.1)
    idle, flooded, drains = [], [], []
    try:
        for _ in range(bench.options.repeat):
            idle.append(_one(bench, small))
            started = time.monotonic()
            flood: list[str] = []
            for client in busy:
                flood += submit_many(
                    client, "/api/v1/ai/generate", [_body() for _ in range(FLOOD_PER_USER)]
                )
            flooded.append(_one(bench, small))
            bench.wait_terminal(flood, timeout=180)
            drains.append(time.monotonic() - started)
            print(f"  idle {idle[-1]:.2f} s, under the flood {flooded[-1]:.2f} s")
    finally:
        bench.procs.stop("worker-ai-fair")
        bench.upstream.latency = latency
    idle_s, flood_s = statistics.median(idle), statistics.median(flooded)
    drain = statistics.median(drains)
    note = f"median of {len(idle)}; the flood drained in {drain:.1f} s (first submit to last end)"
    under = Figure(
        SECTION,
        "small user's job under the flood, submit to SUCCESS",
        flood_s * 1000,
        "ms",
        note=note,
        runs=[s * 1000 for s in flooded],
    )
    alone = Figure(
        SECTION, "the same job, idle system", idle_s * 1000, "ms", runs=[s * 1000 for s in idle]
    )
    bench.figures += [under, alone]
    print(
        f"  small job: {flood_s:.2f} s under the flood, {idle_s:.2f} s idle"
        f" ({flood_s / idle_s:.1f}x)"
    )
    return under, alone

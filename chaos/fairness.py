"""Scenario 6: fair share under fire: busy users' backlog, worker kills, a small user served early.

Eight busy users submit a burst while the ledger worker is stopped (SIGSTOP
of its process group), so a long backlog waits in their lines when it
resumes. While that backlog drains, prefork children are SIGKILLed every
second (once a worker has run 5 s: a child killed while the pool starts ends
the worker) and the whole worker once, at half the backlog, and a ninth user
keeps one job at a time in flight: a fresh one as soon as its last has
started. Every accepted job must end terminal exactly once
(the common invariants), and each of the small user's jobs must start before
the busy users' backlog: few busy jobs start between its submit and its own
start (about one window), not the whole backlog.
"""

from __future__ import annotations

import os
import random
import signal
import time

from bench.client import ApiClient
from bench.stack import BenchDatabase
from bench.users import create_users
from chaos import invariants, scenario
from chaos.load import Load, fund_users, plan
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, RedisServer, child_pids, conveyor_env
from shared.jobs.model import UNFINISHED

NAME = "fairness"
JOBS = 4000
# Submitted while the worker is stopped, within the 15 s its advertised slots
# stay valid (past that the window would widen to FAIR_IDLE_WINDOW).
RATE = 400.0
CHILD_KILL_EVERY = 1.0
# A worker younger than this is left alone: billiard gives up on a pool whose
# children die while it starts ("Could not start worker processes").
SETTLED_SECONDS = 5.0
DRAIN_SECONDS = 180.0
# Busy jobs allowed to start between a small job's submit and its start: the
# window (the worker's 2 slots x a 64-job ledger batch, plus the margin: 129)
# about three times over, for the kills. FIFO would be the whole backlog.
MAX_OVERTAKEN = 400


def _overtaken(db: BenchDatabase, small: list[str], busy: list[str]) -> list[int]:
    """For each small job: busy jobs that started after its submit and before its own start."""
    rows = db.query(
        "SELECT s.id::text, count(b.id) FROM jobs s LEFT JOIN jobs b"
        " ON b.id = ANY(%s::uuid[]) AND b.started_at > s.created_at AND b.started_at < s.started_at"
        " WHERE s.id = ANY(%s::uuid[]) GROUP BY s.id",
        (busy, small),
    )
    return [int(count) for _, count in rows]


def _backlog(db: BenchDatabase) -> int:
    """Jobs accepted and not yet finished."""
    rows = db.query("SELECT count(*) FROM jobs WHERE state = ANY(%s)", (list(UNFINISHED),))
    return int(rows[0][0])


def _started(db: BenchDatabase, job_id: str) -> bool:
    """Whether the job has started (or ended without starting)."""
    rows = db.query(
        "SELECT started_at IS NOT NULL OR NOT state = ANY(%s) FROM jobs WHERE id = %s",
        (list(UNFINISHED), job_id),
    )
    return bool(rows and rows[0][0])


def run(ctx: Context) -> Result:
    db = BenchDatabase(ctx.postgres_admin_dsn, "127.0.0.1", f"conveyor_chaos_{ctx.run_id}_fair")
    db.create()
    ctx.later(db.drop)
    redis_server = RedisServer(ctx.procs, ctx.work_dir / "redis")
    redis_server.start()
    env = conveyor_env(db.url, redis_server.url, ctx.work_dir)
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web()
    conveyor.start_beat()
    conveyor.start_worker("worker")
    conveyor.wait_worker_ready("worker")

    tokens = create_users(env, f"chaos_{ctx.run_id}_f", scenario.USERS)
    (small_token,) = create_users(env, f"chaos_{ctx.run_id}_small", 1)
    small_client = ApiClient(base, small_token)
    load = Load(base, tokens, plan(JOBS, len(tokens), seed=6), rate=RATE)
    load.accepted.update(fund_users(base, tokens, scenario.FUNDING))
    rng = random.Random(6)
    violations: list[str] = []
    small: list[str] = []
    kills = whole_kills = 0

    def submit_small() -> None:
        status, body = small_client.request(
            "POST", "/api/v1/transactions", {"type": "credit", "amount": 1}
        )
        if status == 202:
            small.append(body["task_id"])

    # The burst lands while the worker cannot take any of it: a backlog.
    worker = conveyor.worker_pid("worker")
    os.killpg(worker, signal.SIGSTOP)
    try:
        load.start()
        load.wait_submitted(len(load.jobs), timeout=60)
    finally:
        os.killpg(worker, signal.SIGCONT)
    peak = _backlog(db)
    next_kill = time.monotonic() + CHILD_KILL_EVERY
    seen: tuple[int | None, float] = (worker, time.monotonic())
    deadline = time.monotonic() + DRAIN_SECONDS
    while (backlog := _backlog(db)) and time.monotonic() < deadline:
        worker = conveyor.worker_pid("worker")
        now = time.monotonic()
        if worker != seen[0]:
            seen = (worker, now)
        settled = worker is not None and now - seen[1] >= SETTLED_SECONDS
        if not whole_kills and backlog <= peak // 2 and worker:
            os.killpg(worker, signal.SIGKILL)  # the supervisor starts a fresh one
            whole_kills += 1
        elif now >= next_kill and settled:
            children = child_pids(worker)
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
                kills += 1
            next_kill = now + CHILD_KILL_EVERY
        if not small or _started(db, small[-1]):
            submit_small()
        time.sleep(0.05)
    load.finish(timeout=60)

    found, counts = scenario.check(load, db)
    violations += found
    violations += invariants.wait_terminal(db, small, scenario.SETTLE_SECONDS)
    violations += [f"small user's job doubled: {n}" for n in [invariants.doubled(db, small)] if n]
    busy = [job_id for job_id in load.accepted if job_id not in set(small)]
    overtaken = _overtaken(db, small, busy)
    if not small:
        violations.append("the small user's jobs were all refused")
    elif max(overtaken) > MAX_OVERTAKEN:
        violations.append(
            f"a small user's job waited behind {max(overtaken)} busy jobs (> {MAX_OVERTAKEN})"
        )
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "backlog-peak": peak,
            "small-jobs": len(small),
            "small-overtaken-max": max(overtaken) if overtaken else "n/a",
            "kills": kills,
            "whole-worker-kills": whole_kills,
            "worker-restarts": len(conveyor.restarts("worker")),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

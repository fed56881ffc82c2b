"""Scenario 1: SIGKILL prefork children again and again, and once the whole worker, under load."""

from __future__ import annotations

import os
import random
import signal
import time

from bench.stack import BenchDatabase
from bench.users import create_users
from chaos import scenario
from chaos.load import Load, fund_users, plan
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, RedisServer, child_pids, conveyor_env
from shared.broker.inflight import broker_task_ids
from shared.settings import Settings

NAME = "worker-kills"
JOBS = 2400
RATE = 60.0  # jobs/s submitted: ~40 s of load, with the worker's backlog kept short
CHILD_KILL_EVERY = 3.5  # seconds between SIGKILLs of a random prefork child


def run(ctx: Context) -> Result:
    db = BenchDatabase(ctx.postgres_admin_dsn, "127.0.0.1", f"conveyor_chaos_{ctx.run_id}_kills")
    db.create()
    ctx.later(db.drop)
    redis_server = RedisServer(ctx.procs, ctx.work_dir / "redis")
    redis_server.start()
    env = conveyor_env(db.url, redis_server.url, ctx.work_dir)
    prefix = Settings.from_env(env).redis_key_prefix
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web()
    conveyor.start_beat()
    conveyor.start_worker("worker")
    conveyor.wait_worker_ready("worker")

    tokens = create_users(env, f"chaos_{ctx.run_id}_k", scenario.USERS)
    load = Load(base, tokens, plan(JOBS, len(tokens), seed=1), rate=RATE)
    load.accepted.update(fund_users(base, tokens, scenario.FUNDING))
    rng = random.Random(1)
    violations: list[str] = []
    kills, whole_kills, worker = 0, 0, "worker"
    stranded: list[str] = []
    killed_at = 0.0
    redis_client = redis_server.client()
    load.start()
    next_kill = time.monotonic() + CHILD_KILL_EVERY
    while load.submitted < len(load.jobs):
        if not whole_kills and load.submitted >= len(load.jobs) // 2:
            violations += scenario.still_running(ctx, worker, ctx.procs.pid(worker))
            killed_at = time.time()
            ctx.procs.kill_group(worker)
            # Only the dead worker consumed, so every unacked message was its own.
            stranded = sorted(broker_task_ids(redis_client, prefix, []))
            whole_kills += 1
            # What a supervisor (compose's restart policy, systemd) does next.
            worker = "worker-fresh"
            conveyor.start_worker(worker)
        elif time.monotonic() >= next_kill:
            children = child_pids(ctx.procs.pid(worker))
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
                kills += 1
            next_kill += CHILD_KILL_EVERY
        time.sleep(0.05)
    load.finish(timeout=60)
    redis_client.close()

    found, counts = scenario.check(load, db)
    violations += found
    # The fresh worker took every child kill after its start without dying.
    violations += scenario.still_running(ctx, worker, ctx.procs.pid(worker))
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "kills": kills,
            "whole-worker-kills": whole_kills,
            "stranded": len(stranded),
            "max-recovery": scenario.recovery_after(db, stranded, killed_at),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

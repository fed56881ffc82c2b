"""Scenario 1: SIGKILL prefork children again and again, and once the whole worker, under load."""

from __future__ import annotations

import os
import random
import signal
import time

from bench.stack import BenchDatabase
from bench.users import create_users
from chaos import invariants, scenario
from chaos.load import Load, fund_users, plan
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, RedisServer, child_pids, conveyor_env
from infra.broker.inflight import broker_task_ids
from infra.settings import Settings

NAME = "worker-kills"
JOBS = 2400
RATE = 60.0  # jobs/s submitted: ~40 s of load, with the worker's backlog kept short
CHILD_KILL_EVERY = 3.5  # seconds between SIGKILLs of a random prefork child


def stranded_jobs(db, client, prefix: str, accepted: list[str]) -> list[str]:
    """Unfinished jobs the dead worker held: unacked, or popped but never recorded as unacked.

    With the only consumer dead nothing moves, so a job accepted so far is
    finished, waiting in the queue, unacked, or lost in between (the reply
    to the worker's BRPOP, which kombu records as unacked only on receipt).
    """
    held = broker_task_ids(client, prefix, [])
    on_broker = broker_task_ids(client, prefix, ["ledger"])
    unfinished = invariants.unfinished_created_before(db, accepted, time.time())
    return sorted(held | (set(unfinished) - on_broker))


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
    kills, whole_kills = 0, 0
    stranded: list[str] = []
    killed_at = 0.0
    redis_client = redis_server.client()
    load.start()
    next_kill = time.monotonic() + CHILD_KILL_EVERY
    while load.submitted < len(load.jobs):
        worker = conveyor.worker_pid("worker")
        if not whole_kills and load.submitted >= len(load.jobs) // 2 and worker:
            killed_at = time.time()
            os.killpg(worker, signal.SIGKILL)  # its own group: main process and pool
            stranded = stranded_jobs(db, redis_client, prefix, load.accepted_ids())
            whole_kills += 1
            # The supervisor starts a fresh worker, as compose's restart policy would.
        elif time.monotonic() >= next_kill:
            children = child_pids(worker) if worker else []
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
                kills += 1
            next_kill += CHILD_KILL_EVERY
        time.sleep(0.05)
    load.finish(timeout=60)
    redis_client.close()

    found, counts = scenario.check(load, db)
    violations += found
    exits = conveyor.restarts("worker")
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "kills": kills,
            "whole-worker-kills": whole_kills,
            "stranded": len(stranded),
            "max-recovery": scenario.recovery_after(db, stranded, killed_at),
            # Exits beyond the deliberate one: a pool child killed while the
            # worker started (billiard's WorkerLostError) ends the worker.
            "worker-restarts": len(exits),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

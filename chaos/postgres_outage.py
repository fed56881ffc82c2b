"""Scenario 3: PostgreSQL stopped (immediate shutdown) for ~20 s during submits and polls."""

from __future__ import annotations

import time

from bench.users import create_users
from chaos import invariants, scenario
from chaos.load import Load, fund_users, plan
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, PostgresCluster, RedisServer, conveyor_env

NAME = "postgres-outage"
JOBS = 700
RATE = 20.0
OUTAGE_SECONDS = 20.0
ALLOWED_503 = frozenset({"database"})


def run(ctx: Context) -> Result:
    # A cluster of our own: the machine's shared PostgreSQL is never stopped.
    cluster = PostgresCluster(ctx.procs)
    ctx.later(cluster.destroy)
    cluster.init()
    cluster.start()
    db = cluster.create_database("conveyor")
    redis_server = RedisServer(ctx.procs, ctx.work_dir / "redis")
    redis_server.start()
    env = conveyor_env(db.url, redis_server.url, ctx.work_dir)
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web()
    conveyor.start_beat()
    conveyor.start_worker("worker")
    conveyor.wait_worker_ready("worker")
    worker = conveyor.worker_pid("worker")
    beat = ctx.procs.pid("beat")

    tokens = create_users(env, f"chaos_{ctx.run_id}_p", scenario.USERS)
    load = Load(base, tokens, plan(JOBS, len(tokens), seed=3), rate=RATE, allowed_503=ALLOWED_503)
    load.accepted.update(fund_users(base, tokens, scenario.FUNDING))
    load.start()
    load.wait_submitted(len(load.jobs) // 4, timeout=60)
    cluster.stop(immediate=True)
    # The outage itself: submits and polls keep coming meanwhile.
    time.sleep(OUTAGE_SECONDS)
    cluster.start()
    restarted_at = time.time()
    load.finish(timeout=120)

    violations, counts = scenario.check(load, db)
    violations += conveyor.worker_survived("worker", worker)
    violations += scenario.still_running(ctx, "beat", beat)
    ids = list(load.accepted)
    after = [t for t in invariants.finish_times(db, ids) if t > restarted_at]
    if not after:
        violations.append(
            "no job finished after PostgreSQL came back: the worker did not reconnect"
        )
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "outage": f"{OUTAGE_SECONDS:.0f}s",
            "poll-503": load.poll_503s(),
            "finished-after-restart": len(after),
            "first-finish-after-restart": scenario.first_finish_after(db, ids, restarted_at),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

"""Scenario 3: PostgreSQL stopped (immediate shutdown) for ~20 s during submits and polls."""

from __future__ import annotations

import time

from chaos import invariants, scenario
from chaos.scenario import Context, Result
from chaos.stack import PostgresCluster, RedisServer

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
    stack = scenario.one_host_stack(
        ctx,
        db.url,
        redis_server.url,
        user_prefix=f"chaos_{ctx.run_id}_p",
        jobs=JOBS,
        seed=3,
        rate=RATE,
        allowed_503=ALLOWED_503,
    )
    conveyor, worker, beat, load = stack.conveyor, stack.worker, stack.beat, stack.load
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

"""Scenario 2: Redis (broker, status, cache) SIGKILLed mid-load and restarted from its AOF."""

from __future__ import annotations

import time

from bench.stack import BenchDatabase
from chaos import invariants, scenario
from chaos.scenario import Context, Result
from chaos.stack import RedisServer

NAME = "redis-restart"
JOBS = 900
RATE = 30.0
OUTAGE_SECONDS = 5.0
# While Redis is down a submission may be refused naming the broker (its
# publish failed) or Redis itself (admission's queue-depth read).
ALLOWED_503 = frozenset({"broker", "redis"})


def run(ctx: Context) -> Result:
    db = BenchDatabase(ctx.postgres_admin_dsn, "127.0.0.1", f"conveyor_chaos_{ctx.run_id}_redis")
    db.create()
    ctx.later(db.drop)
    redis_server = RedisServer(ctx.procs, ctx.work_dir / "redis")
    redis_server.start()
    stack = scenario.one_host_stack(
        ctx,
        db.url,
        redis_server.url,
        user_prefix=f"chaos_{ctx.run_id}_r",
        jobs=JOBS,
        seed=2,
        rate=RATE,
        allowed_503=ALLOWED_503,
    )
    conveyor, worker, beat, load = stack.conveyor, stack.worker, stack.beat, stack.load
    load.wait_submitted(len(load.jobs) // 3, timeout=60)
    redis_server.kill()
    # The outage itself: nothing to observe but time passing.
    time.sleep(OUTAGE_SECONDS)
    redis_server.start()
    restarted_at = time.time()
    load.finish(timeout=120)

    violations, counts = scenario.check(load, db)
    # Nobody restarts them: worker and beat reconnect on their own.
    violations += conveyor.worker_survived("worker", worker)
    violations += scenario.still_running(ctx, "beat", beat)
    after = [t for t in invariants.finish_times(db, list(load.accepted)) if t > restarted_at]
    if not after:
        violations.append("no job finished after Redis came back: the worker did not reconnect")
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "outage": f"{OUTAGE_SECONDS:.0f}s",
            "finished-after-restart": len(after),
            "first-finish-after-restart": scenario.first_finish_after(
                db, list(load.accepted), restarted_at
            ),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

"""Scenario 4: several hosts in network namespaces; one worker host is cut off mid-load.

Hosts (each a namespace on one private bridge): `data` (redis-server and a
throwaway PostgreSQL cluster listening on its veth address), `web` (gunicorn
and beat), `w1` and `w2` (one Procfile worker each, under its own hostname)
and `client` (the load and the checks). `w1`'s switch port goes down while it
holds messages and runs jobs; they must finish on `w2`.
"""

from __future__ import annotations

import time

from bench.users import create_users
from chaos import invariants, scenario
from chaos.load import Load, fund_users, plan
from chaos.netns import Network, inside
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, PostgresCluster, RedisServer, conveyor_env

NAME = "lost-host"
JOBS = 900
RATE = 30.0
HOSTS = ["data", "web", "w1", "w2", "client"]
SUBNET = "10.231.7"  # a private /24 that exists only on the namespaces' bridge
STRANDED_GRACE = 5.0


def run(ctx: Context) -> Result:
    network = Network(f"cvchaos{ctx.run_id[:6]}", SUBNET)
    ctx.later(network.destroy)
    network.create(HOSTS)
    data, client = network.namespace("data"), network.namespace("client")
    data_host = network.addresses["data"]
    cluster = PostgresCluster(
        ctx.procs, host=data_host, port=5432, wrap=network.exec_argv("data"), netns=data
    )
    ctx.later(cluster.destroy)
    cluster.init()
    cluster.start()
    db = cluster.create_database("conveyor")
    redis_server = RedisServer(
        ctx.procs, ctx.work_dir / "redis", host=data_host, port=6379,
        wrap=network.exec_argv("data"), netns=data,
    )  # fmt: skip
    redis_server.start()
    env = conveyor_env(db.url, redis_server.url, ctx.work_dir)
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web(
        host=network.addresses["web"], wrap=network.exec_argv("web"), netns=client
    )
    conveyor.start_beat(wrap=network.exec_argv("web"))
    for host in ("w1", "w2"):
        conveyor.start_worker(host, wrap=network.exec_argv(host), hostname=f"chaos-{host}")
    for host in ("w1", "w2"):
        conveyor.wait_worker_ready(host)
    survivor = conveyor.worker_pid("w2")

    with inside(client):
        tokens = create_users(env, f"chaos_{ctx.run_id}_h", scenario.USERS)
        load = Load(base, tokens, plan(JOBS, len(tokens), seed=4), rate=RATE)
        load.accepted.update(fund_users(base, tokens, scenario.FUNDING))
        load.start()
        load.wait_submitted(len(load.jobs) * 2 // 5, timeout=60)
        cut_at = time.time()
        network.cut("w1")
        # w2 runs a job within ~10 ms. Whatever was accepted up to a second
        # before this snapshot and is still unfinished sat on w1: reserved,
        # running, or popped from the queue by w1's blocked BRPOP after the cut
        # (Redis does not know the link is gone, so the reply is lost on it).
        time.sleep(STRANDED_GRACE)
        stranded = invariants.unfinished_created_before(db, load.accepted_ids(), time.time() - 1.0)
        load.finish(timeout=120)
        violations, counts = scenario.check(load, db)
    violations += conveyor.worker_survived("w2", survivor)
    ids = list(load.accepted)
    after = [t for t in invariants.finish_times(db, ids) if t > cut_at]
    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "cut": "w1 (link down)",
            "stranded": len(stranded),
            "finished-after-cut": len(after),
            "max-recovery": scenario.recovery_after(db, stranded, cut_at),
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)

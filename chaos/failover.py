"""Scenario 5: Redis behind Sentinel; the master SIGKILLed mid-burst and a replica promoted.

Three redis-server (a master and two replicas, AOF each) and three sentinels
on loopback stand in for the one Redis; every process (web, events, worker,
worker_ai, beat) finds the master through them (REDIS_SENTINELS). A burst of
ledger and AI jobs runs; a third of the way in, the master's link to its
replicas breaks and the workers stop taking jobs (SIGSTOP, as a backlog
would), and a second later the master is SIGKILLed. Replication is
asynchronous, so what it had not yet passed on is gone: that second's job
messages, status documents and acks. The sentinels promote a replica, and
the old master comes back (as a restart policy brings it) to be made a
replica.

Besides the ledger invariants: every submission answers 202 or a 503 with
Retry-After; every job accepted reaches a terminal state within two minutes
of the fault (the job row is written before the 202, and the sweep publishes
again what vanished); none runs twice; the same worker, worker_ai, beat and
events processes go on by themselves, and an event stream held open across
the switch (reconnecting with Last-Event-ID, as EventSource does) delivers
the end of the jobs submitted after it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from bench.stack import BenchDatabase
from bench.users import create_users
from chaos import invariants, scenario
from chaos.load import TERMINAL, JobRequest, Load, fund_users, plan
from chaos.scenario import Context, Result
from chaos.stack import Conveyor, SentinelRedis, conveyor_env

NAME = "failover"
JOBS = 900
RATE = 30.0
# Every fifth job is an AI job (the offline provider, a prompt of its own each).
AI_EVERY = 5
# A sentinel calls the master down after this much silence (Sentinel's default
# is 30 s; docs/sentinel.md suggests 5 s). Compressed, as the other timers are.
DOWN_AFTER_MS = 3000
# The replicas' link breaks this long before the master dies: the writes of that
# last second (job messages, status documents, acks) exist only on the master.
REPLICA_LAG = 1.0
# Every job accepted must be terminal this long after the fault (README's promise).
RECOVERY_BOUND = 120.0
# While there is no master a submission may be refused naming the broker (its
# publish failed) or Redis itself (admission's queue-depth read).
ALLOWED_503 = frozenset({"broker", "redis"})
# The load's budgets: no limit is reached; the limiter itself runs (behind Sentinel too).
LIMITS = {
    "RATELIMIT_ENABLED": "true",
    "RATELIMIT_USER": "1000000/minute",
    "RATELIMIT_AI": "1000000/hour",
    "RATELIMIT_POLL": "1000000/minute",
    "RATELIMIT_ANONYMOUS": "1000000/minute",
    "RATELIMIT_AUTH": "1000000/minute",
    "AI_DAILY_CALL_LIMIT": "1000000",
}


def failover_plan(count: int, users: int, seed: int) -> list[JobRequest]:
    """The ledger plan with every AI_EVERY-th job an AI text job instead."""
    jobs = plan(count, users, seed)
    for index in range(AI_EVERY - 1, count, AI_EVERY):
        body = {"kind": "text", "prompt": f"chaos failover {seed}-{index}",
                "options": {"operation": "summarize"}}  # fmt: skip
        jobs[index] = JobRequest(jobs[index].user, "/api/v1/ai/generate", body)
    return jobs


def run(ctx: Context) -> Result:
    db = BenchDatabase(ctx.postgres_admin_dsn, "127.0.0.1", f"conveyor_chaos_{ctx.run_id}_fail")
    db.create()
    ctx.later(db.drop)
    redis_set = SentinelRedis(ctx.procs, ctx.work_dir / "redis", down_after_ms=DOWN_AFTER_MS)
    redis_set.start()
    env = conveyor_env(
        db.url, redis_set.env["REDIS_URL"], ctx.work_dir, **redis_set.env, **LIMITS,
        AI_WORKER_CONCURRENCY="20", AI_WORKER_METRICS_PORT="0",
        EVENTS_KEEPALIVE_SECONDS="2",
    )  # fmt: skip
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web()
    events_base = conveyor.start_events()
    conveyor.start_beat()
    conveyor.start_worker("worker")
    conveyor.start_worker("worker_ai", process_type="worker_ai")
    for name in ("worker", "worker_ai"):
        conveyor.wait_worker_ready(name)
    pids = {name: conveyor.worker_pid(name) for name in ("worker", "worker_ai")}
    servers = {name: ctx.procs.pid(name) for name in ("web", "events", "beat")}
    tokens = create_users(env, f"chaos_{ctx.run_id}_f", scenario.USERS)
    load = Load(
        base, tokens, failover_plan(JOBS, len(tokens), seed=5), rate=RATE, allowed_503=ALLOWED_503
    )
    load.accepted.update(fund_users(base, tokens, scenario.FUNDING))
    watcher = StreamWatcher(events_base, tokens[0])
    watcher.start()
    load.start()

    load.wait_submitted(len(load.jobs) // 3, timeout=60)
    # Replication is asynchronous: when the replicas' link breaks REPLICA_LAG
    # seconds before the master dies, it dies with writes no replica has. The
    # workers are held too, as a backlog holds jobs in the queue: the jobs of
    # that last second are then only in the dead master's lists and the rows.
    cut_at = time.time()
    redis_set.cut_replication()
    _hold(pids.values(), True)
    time.sleep(REPLICA_LAG)
    killed = redis_set.kill_master()
    killed_at = time.time()
    redis_set.resume_replicas()
    _hold(pids.values(), False)
    only_on_master = invariants.created_after(db, list(load.accepted), cut_at, until=killed_at)
    promoted = redis_set.wait_promoted(killed, timeout=60)
    promoted_at = time.time()
    redis_set.start_node(killed)  # back with its old command line: Sentinel demotes it
    load.finish(timeout=120)

    violations, counts = scenario.check(load, db)
    ids = list(load.accepted)
    all_done = scenario.recovery_after(db, ids, killed_at)
    if all_done == "never" or float(all_done.rstrip("s")) > RECOVERY_BOUND:
        violations.append(f"accepted jobs terminal {all_done} after the fault, not within 2 min")
    for name, pid in pids.items():
        violations += conveyor.worker_survived(name, pid)
    for name, pid in servers.items():
        violations += scenario.still_running(ctx, name, pid)
    after = [t for t in invariants.finish_times(db, ids) if t > promoted_at]
    if not after:
        violations.append("no job finished after the promotion: the workers did not follow")
    violations += watcher.check(db, load, promoted_at)
    violations += fresh_stream_violations(events_base, tokens[0], db, load, promoted_at)
    watcher.stop()
    if redis_set.master() is None or redis_set.replicas_in_sync() != 2:
        violations.append("the old master did not come back as a replica of the new one")

    figures = scenario.common_figures(load, counts, db)
    figures.update(
        {
            "ai-jobs": sum(1 for j in load.accepted.values() if j.path.endswith("/generate")),
            "replica-lag": f"{REPLICA_LAG:.0f}s",
            "killed": killed,
            "promoted": promoted,
            "no-master": f"{promoted_at - killed_at:.1f}s",
            "503s-between": _window(load.refused_at, killed_at),
            "all-terminal-after-fault": all_done,
            "lost": sum(1 for s in invariants.job_states(db, ids).values() if s not in TERMINAL),
            "doubled": invariants.doubled(db, ids),
            "accepted-after-cut": len(only_on_master),
            "redispatched": invariants.redispatched(db, ids),
            "stream-reconnects": watcher.reconnects,
            "elapsed": ctx.elapsed(),
        }
    )
    return Result(NAME, figures, violations)


def _hold(worker_pids, held: bool) -> None:
    """SIGSTOP (or SIGCONT) each worker's whole process group: main process and pool."""
    for pid in worker_pids:
        os.killpg(pid, signal.SIGSTOP if held else signal.SIGCONT)


def _window(moments: list[float], origin: float) -> str:
    """`first-last` seconds after `origin` of `moments` ("-" when there are none)."""
    if not moments:
        return "-"
    return f"{min(moments) - origin:+.1f}..{max(moments) - origin:+.1f}s"


@dataclass
class StreamWatcher:
    """One user's `GET /events` on the events process, held open and resumed like EventSource."""

    base_url: str
    token: str
    ended: dict[str, str] = field(default_factory=dict)  # task id -> terminal state seen
    reconnects: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._last_id: str | None = None
        self._thread = threading.Thread(target=self._run, name="stream-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def check(self, db, load: Load, promoted_at: float, bound: float = 60.0) -> list[str]:
        """The stream's user's jobs accepted after the promotion: each one's end was streamed."""
        mine = [task for task, job in load.accepted.items() if job.user == 0]
        later = invariants.created_after(db, mine, promoted_at)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            missing = [task for task in later if task not in self.ended]
            if not later:
                return ["no job of the stream's user was accepted after the switch"]
            if not missing:
                return []
            time.sleep(0.5)
        return [
            f"the event stream open across the failover missed the end of {len(missing)} of "
            f"{len(later)} jobs submitted after it (reconnects: {self.reconnects})"
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            # A broken or ended stream is reconnected, as EventSource does.
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                self._follow()
            if self._stop.wait(1.0):
                return
            self.reconnects += 1

    def _follow(self) -> None:
        host, port = self.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=20)
        headers = {"Authorization": f"Bearer {self.token}"}
        if self._last_id:
            headers["Last-Event-ID"] = self._last_id
        try:
            connection.request("GET", "/api/v1/events", headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                response.read()
                return
            fields: dict[str, str] = {}
            while not self._stop.is_set():
                line = response.readline()
                if not line:
                    return
                text = line.decode().rstrip("\r\n")
                if text and not text.startswith(":"):
                    name, _, value = text.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif not text and "data" in fields:
                    self._record(fields)
                    fields = {}
        finally:
            connection.close()

    def _record(self, fields: dict[str, str]) -> None:
        if fields.get("id"):
            self._last_id = fields["id"]
        data = json.loads(fields["data"])
        if fields.get("event") == "state" and data.get("state") in TERMINAL:
            self.ended[data["task_id"]] = data["state"]


def fresh_stream_violations(
    base_url: str, token: str, db, load: Load, promoted_at: float
) -> list[str]:
    """A job stream opened now, for a job accepted after the switch, runs to its terminal event."""
    mine = [task for task, job in load.accepted.items() if job.user == 0]
    later = invariants.created_after(db, mine, promoted_at)
    if not later:
        return []
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(
            "GET", f"/api/v1/tasks/{later[-1]}/events", headers={"Authorization": f"Bearer {token}"}
        )
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return [f"a job stream after the failover failed: {exc!r}"]
    finally:
        connection.close()
    states = [
        json.loads(line.removeprefix("data: ")).get("state")
        for line in body.splitlines()
        if line.startswith("data: ")
    ]
    if response.status != 200 or not states or states[-1] not in TERMINAL:
        return [f"a job stream after the failover answered {response.status}, states {states}"]
    return []

"""Each scenario of `make bench`, run in one order against one stack so ratios compare."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import noop_app, profiling, waiting_clients, wrk
from bench.client import ApiClient, submit_many, wait_until
from bench.naive_app import create_celery
from bench.report import Figure
from bench.stack import (
    BIN,
    BenchDatabase,
    PeakRss,
    Processes,
    celery_worker_argv,
    free_port,
    gunicorn_argv,
    tree_cpu_seconds,
    tree_rss_bytes,
    wait_http,
)

PASSWORD = "bench-password-123"
CROWD = "Ten thousand waiting clients (keep-alive, each polls a finished job every ~5 s)"
MEMORY = "Memory (resident, summed over a process type's processes)"
CREDIT = {"type": "credit", "amount": 100, "description": "bench"}
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Options:
    """How long and how hard each scenario runs."""

    duration: float = 10.0
    warmup: float = 2.0
    repeat: int = 1
    connections: int = 32
    threads: int = 2
    drain_jobs: int = 3000
    latency_jobs: int = 200
    submit_users: int = 1000
    ledger_concurrency: int = 0  # 0: one process per core, as the Procfile runs it
    ai_concurrencies: tuple[int, ...] = (10, 50, 100)
    ai_latency: float = 0.2
    ai_slow_jobs: int = 1000  # at the ideal 100 jobs/s, 10 s against the 1 s upstream
    crowd_clients: int = 10_000
    crowd_interval: float = 5.0  # s between one client's polls (jittered ±20%)
    crowd_ramp: float = 20.0  # s over which the clients connect
    crowd_duration: float = 30.0  # s all of them keep polling
    profile: bool = True


@dataclass
class Bench:
    """The scenarios, sharing one database, one Redis prefix and one set of processes."""

    options: Options
    db: BenchDatabase
    redis: redis.Redis
    redis_url: str
    prefix: str
    env: dict[str, str]
    procs: Processes
    work_dir: Path
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)  # base URL -> process name
    upstream: Any = None  # the fake AI upstream (bench/upstream.py), whose latency we set

    # -- plumbing ---------------------------------------------------------------

    def start_web(
        self, name: str, app_spec: str, env: dict[str, str], extra: tuple[str, ...] = ()
    ) -> str:
        port = free_port()
        self.procs.start(name, gunicorn_argv(app_spec, port, extra), env)
        base = f"http://127.0.0.1:{port}"
        self.servers[base] = name
        health = "/health" if "naive" in name else "/healthz"
        wait_http(base + health, check=lambda: self.procs.check_alive(name))
        return base

    def start_worker(
        self,
        name: str,
        pool: str,
        queues: str,
        concurrency: int,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        argv = celery_worker_argv(pool, queues, concurrency, name) + list(extra)
        self.procs.start(name, argv, {**self.env, **(env or {})})

    def load(
        self, section: str, name: str, base: str, script: Path, *, profile_as: str = ""
    ) -> Figure:
        """Warm up, then `repeat` measured wrk runs; the median run by rate is reported."""
        opts = self.options
        wrk.run(base, script, duration=opts.warmup, connections=opts.connections, threads=2)
        pid = self.procs.pid(self.servers[base])
        runs, cpu = [], []
        for _ in range(opts.repeat):
            before = tree_cpu_seconds(pid)
            result = wrk.run(
                base, script, duration=opts.duration, connections=opts.connections,
                threads=opts.threads,
            )  # fmt: skip
            runs.append(result)
            # CPU per request holds up under other load on the box better than req/s does.
            cpu.append((tree_cpu_seconds(pid) - before) * 1000 / max(1, result.requests))
        index = sorted(range(len(runs)), key=lambda i: runs[i].requests_per_second)[len(runs) // 2]
        median = runs[index]
        errors = sum(r.errors for r in runs)
        fig = Figure(
            section,
            name,
            median.requests_per_second,
            p50_ms=median.p50_ms,
            p99_ms=median.p99_ms,
            note=f"{errors} errors" if errors else "",
            runs=[r.requests_per_second for r in runs],
            cpu_ms=cpu[index],
        )
        self.figures.append(fig)
        print(
            f"  {name}: {fig.rate:,.0f} req/s, p50 {fig.p50_ms:.2f} ms, p99 {fig.p99_ms:.2f} ms,"
            f" web CPU {fig.cpu_ms:.2f} ms/req"
        )
        if profile_as and opts.profile:
            self.profile(profile_as, base, script)
        return fig

    def profile(self, label: str, base: str, script: Path) -> None:
        """One extra, unreported load run with py-spy attached to the web server."""
        raw = self.work_dir / f"profile-{label}.txt"
        spy = profiling.start(self.procs.pid(self.servers[base]), raw, self.options.duration)
        if spy is None:
            self.profiles[label] = "_py-spy not installed (`pip install -r requirements-dev.txt`)_"
            return
        time.sleep(0.5)  # let py-spy attach before the load starts
        wrk.run(base, script, duration=self.options.duration, connections=32, threads=2)
        spy.wait(30)
        self.profiles[label] = profiling.summarise(raw) if raw.exists() else "_py-spy failed_"

    def script(self, name: str, paths: list[str], **kwargs: Any) -> Path:
        return wrk.write_script(self.work_dir / f"{name}.lua", paths, **kwargs)

    def job_window(self, ids: list[str]) -> tuple[int, int, float]:
        """(succeeded, terminal, seconds from the first start to the last finish) of `ids`."""
        ((succeeded, terminal, seconds),) = self.db.query(
            "SELECT count(*) FILTER (WHERE state = 'SUCCESS'),"
            " count(*) FILTER (WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED')),"
            " EXTRACT(EPOCH FROM max(finished_at) - min(started_at))"
            " FROM jobs WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        return succeeded, terminal, float(seconds or 0.0)

    def wait_terminal(self, ids: list[str], timeout: float) -> bool:
        return wait_until(lambda: self.job_window(ids)[1] >= len(ids), timeout, interval=0.5)

    def purge(self, queue: str) -> None:
        """Drop a queue's waiting jobs: the broker's list and, on a fair queue, the users' lines."""
        # kombu's Redis transport keeps a queue as one list under the global key prefix.
        self.redis.delete(f"{self.prefix}{queue}")
        # The fair gate's lines, counters and released set (shared/jobs/fair.py): left behind,
        # the dropped jobs would hold the window and be released ahead of the next scenario's.
        # The workers' advertised slots and the users' policies stay.
        keep = {f"{self.prefix}fair:{queue}:{name}" for name in ("slots", "policy")}
        for key in self.redis.scan_iter(f"{self.prefix}fair:{queue}:*", count=1000):
            if key not in keep:
                self.redis.delete(key)

    # -- scenarios --------------------------------------------------------------

    def naive_baseline(self) -> dict[str, Figure]:
        """(1) and (4): the textbook .delay() endpoint, /health and an AsyncResult poll."""
        print("naive baseline (Flask + .delay(), same gunicorn settings)")
        naive_prefix = f"{self.prefix}naive:"
        env = {**self.env, "BENCH_NAIVE_REDIS_URL": self.redis_url}
        env["BENCH_NAIVE_PREFIX"] = naive_prefix
        base = self.start_web("naive-web", "bench.naive_app:create_app()", env)
        section = "Naive baseline (Flask + Celery `.delay()`)"
        figs = {
            "health": self.load(section, "naive `GET /health`", base, self.script("h", ["/health"]))
        }
        submit = self.script("naive-submit", ["/submit"], method="POST")
        figs["submit"] = self.load(section, "naive `POST /submit` (`.delay()`)", base, submit)
        celery = create_celery(self.redis_url, naive_prefix)
        ids = [str(uuid.uuid4()) for _ in range(1000)]
        for task_id in ids:  # what a worker leaves behind: a SUCCESS result per task
            celery.backend.store_result(task_id, 3, "SUCCESS")
        poll = self.script("naive-poll", [f"/tasks/{i}" for i in ids])
        figs["poll"] = self.load(section, "naive `AsyncResult` poll (finished)", base, poll)
        self.procs.stop("naive-web")
        self.purge("naive")
        return figs

    def conveyor_web(self, base: str, submitters: list[str]) -> dict[str, Figure]:
        """(2): health and submit, with the ledger worker stopped (the API alone).

        Submissions rotate over many users' tokens: with the worker stopped every
        job stays unfinished, and one user would pile up a backlog no real user
        can have (MAX_INFLIGHT_JOBS, default 50, caps it).
        """
        print(f"Conveyor API (ledger worker stopped; submits rotate over {len(submitters)} users)")
        section = "Conveyor API"
        health = self.script("healthz", ["/healthz"])
        figs = {"health": self.load(section, "`GET /healthz`", base, health)}
        submit = self.script(
            "submit",
            ["/api/v1/transactions"],
            method="POST",
            body=_json(CREDIT),
            headers={"Content-Type": "application/json"},
            tokens=submitters,
        )
        figs["submit"] = self.load(
            section, "`POST /api/v1/transactions` (submit)", base, submit, profile_as="submit"
        )
        # Nothing consumes these: drop the messages so the drain below measures only its own jobs.
        self.purge("ledger")
        return figs

    def drain(self, client: ApiClient) -> list[str]:
        """(6): N ledger jobs queued with the worker stopped, then drained by a prefork worker."""
        n = self.options.drain_jobs
        print(f"ledger worker drain: enqueueing {n} jobs")
        ids = submit_many(client, "/api/v1/transactions", [CREDIT] * n)
        concurrency = self.options.ledger_concurrency or _cores()
        metrics_port = free_port()
        self.start_worker(
            "worker", "prefork", "ledger,maintenance", concurrency,
            env={"WORKER_METRICS_PORT": str(metrics_port)},
        )  # fmt: skip
        pid = self.procs.pid("worker")
        wait_http(f"http://127.0.0.1:{metrics_port}/metrics")
        cpu_before = tree_cpu_seconds(pid)
        with PeakRss(pid) as rss:
            if not self.wait_terminal(ids, timeout=max(120.0, n / 20)):
                self.procs.check_alive("worker")
        cpu = tree_cpu_seconds(pid) - cpu_before
        batches = _batch_sizes(f"http://127.0.0.1:{metrics_port}/metrics")
        time.sleep(1)  # let the pool settle before reading it idle
        self.rss("worker", "idle after the drain", tree_rss_bytes(pid))
        self.rss("worker", f"draining {n} ledger jobs (peak)", rss.peak)
        succeeded, terminal, seconds = self.job_window(ids)
        rate = succeeded / seconds if seconds else None
        note = f"{n} jobs, prefork -c {concurrency}, {seconds:.1f} s first start → last finish"
        if batches:
            note += f"; {batches[0]:,.0f} batches, {batches[1]:.1f} jobs per batch on average"
        if succeeded != n:
            note += f"; only {succeeded} SUCCESS ({terminal} terminal)"
        self.figures.append(
            Figure("Ledger worker", "drain rate", rate, "jobs/s", note=note, cpu_ms=cpu * 1000 / n)
        )
        print(f"  drained {succeeded}/{n} in {seconds:.1f} s: {rate or 0:,.0f} jobs/s")
        return ids

    def profile_drain(self, client: ApiClient) -> None:
        """An extra, unreported drain with py-spy on the worker's process tree."""
        if not self.options.profile:
            return
        n = self.options.drain_jobs
        print(f"ledger worker drain, profiled: enqueueing {n} jobs")
        ids = submit_many(client, "/api/v1/transactions", [CREDIT] * n)
        shape = ("prefork", "ledger,maintenance", self.options.ledger_concurrency or _cores())
        label = "ledger drain (prefork worker: main process and pool processes)"
        self.profile_worker(label, "worker-profiled", shape, ids, f"{self.prefix}ledger")

    def profile_ai(self, client: ApiClient) -> None:
        """An extra, unreported run of the Procfile's worker_ai (1 s upstream) under py-spy."""
        if not self.options.profile or self.upstream is None:
            return
        latency, self.upstream.latency = self.upstream.latency, 1.0
        try:
            bodies = [_ai_body(f"bench profiled {i} {uuid.uuid4().hex}") for i in range(500)]
            print("AI jobs, profiled: enqueueing 500")
            ids = submit_many(client, "/api/v1/ai/generate", bodies)
            label = "AI jobs (worker_ai: gevent, concurrency 100, 1 s upstream)"
            shape = ("gevent", "ai", 100)
            extra = ("--prefetch-multiplier", "4")
            self.profile_worker(label, "worker-ai-profiled", shape, ids, f"{self.prefix}ai", extra)
        finally:
            self.upstream.latency = latency

    def profile_worker(
        self,
        label: str,
        name: str,
        shape: tuple[str, str, int],
        ids: list[str],
        queue: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        """Start a worker of `shape` on queued `ids`, sample it with py-spy until they finish."""
        pool, queues, concurrency = shape
        self.start_worker(name, pool, queues, concurrency, extra)
        pid = self.procs.pid(name)
        wait_until(lambda: self.redis.llen(queue) < len(ids), 60, interval=0.01)
        raw = self.work_dir / f"profile-{name}.txt"
        spy = profiling.start(pid, raw, 120)
        if spy is None:
            self.profiles[label] = "_py-spy not installed (`pip install -r requirements-dev.txt`)_"
        try:
            self.wait_terminal(ids, timeout=120)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
                spy.wait(30)
            self.procs.stop(name)
        if spy is not None:
            self.profiles[label] = (
                profiling.summarise(raw, inside=None) if raw.exists() else "_py-spy failed_"
            )

    def latency(self, client: ApiClient) -> None:
        """(7): submit → SUCCESS for single jobs at low load, polled by the client."""
        n = self.options.latency_jobs
        print(f"submit → SUCCESS latency, {n} sequential jobs")
        observed, ids = [], []
        for _ in range(n):
            started = time.perf_counter()
            task_id = client.expect("POST", "/api/v1/transactions", CREDIT, 202)["task_id"]
            while client.expect("GET", f"/api/v1/tasks/{task_id}")["state"] not in TERMINAL:
                time.sleep(0.002)
            observed.append((time.perf_counter() - started) * 1000)
            ids.append(task_id)
        server = [
            float(ms)
            for (ms,) in self.db.query(
                "SELECT EXTRACT(EPOCH FROM finished_at - created_at) * 1000"
                " FROM jobs WHERE id = ANY(%s::uuid[])",
                (ids,),
            )
        ]
        section = "Ledger worker"
        for name, samples, note in (
            ("submit → SUCCESS, seen by the client", observed, "HTTP submit, poll every 2 ms"),
            ("submit → SUCCESS, job row", server, "finished_at - created_at"),
        ):
            p50, p99 = _percentile(samples, 50), _percentile(samples, 99)
            self.figures.append(Figure(section, name, None, "", p50, p99, f"{n} jobs; {note}"))
            print(f"  {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")

    def poll(self, token: str, base: str, ids: list[str]) -> Figure:
        """(3): GET /tasks/{id} over finished jobs (live documents in Redis)."""
        print("Conveyor poll")
        auth = {"Authorization": f"Bearer {token}"}
        script = self.script("poll", [f"/api/v1/tasks/{i}" for i in ids[:1000]], headers=auth)
        return self.load(
            "Conveyor API", "`GET /api/v1/tasks/{id}` (poll, finished)", base, script,
            profile_as="poll",
        )  # fmt: skip

    def wallet(self, token: str, base: str, client: ApiClient) -> tuple[Figure, Figure]:
        """(5): GET /wallet with the cache on, then on a second server with CACHE_ENABLED=false."""
        print("GET /wallet, cache on vs off")
        section = "`GET /api/v1/wallet`"
        auth = {"Authorization": f"Bearer {token}"}
        script = self.script("wallet", ["/api/v1/wallet"], headers=auth)
        client.expect("GET", "/api/v1/wallet")
        cached = client.expect("GET", "/api/v1/wallet").get("from_cache")
        on = self.load(section, "cache on (`CACHE_ENABLED=true`)", base, script)
        if not cached:
            on.note = "the route did not answer `from_cache: true`: no cache layer in effect yet"
        self.procs.stop("web")  # one API server at a time, so they do not share the CPUs
        off_env = {**self.env, "CACHE_ENABLED": "false"}
        off_base = self.start_web("web-nocache", "api.wsgi:app", off_env)
        off = self.load(section, "cache off (`CACHE_ENABLED=false`)", off_base, script)
        self.procs.stop("web-nocache")
        return on, off

    def ai(self, client: ApiClient) -> None:
        """(8): AI jobs/s through a gevent worker against the loopback fake upstream."""
        section = "AI jobs (gevent worker, fake upstream with "
        section += f"{self.options.ai_latency * 1000:.0f} ms latency)"
        status, _ = client.request("POST", "/api/v1/ai/generate", _ai_body("probe"))
        if status != 202:
            detail = f"`POST /api/v1/ai/generate` answered {status}"
            print(f"AI scenario not available: {detail}")
            self.figures.append(Figure(section, "AI jobs", None, note=f"not available: {detail}"))
            return
        # The Procfile's shape: worker_ai reserves AI_WORKER_PREFETCH (4) messages per greenlet.
        shipped = ("--prefetch-multiplier", "4")
        for concurrency in self.options.ai_concurrencies:
            n = max(100, 5 * concurrency)
            bodies = [_ai_body(f"bench {concurrency} {i} {uuid.uuid4().hex}") for i in range(n)]
            name = f"concurrency {concurrency}"
            self.ai_batch(client, section, name, bodies, concurrency, shipped)
        warm = client.expect("POST", "/api/v1/ai/generate", _ai_body("the cached prompt"), 202)
        self.start_worker("worker-ai", "gevent", "ai", 10)
        self.wait_terminal([warm["task_id"]], timeout=60)
        self.procs.stop("worker-ai")
        top = max(self.options.ai_concurrencies)
        bodies = [_ai_body("the cached prompt")] * 500
        self.ai_batch(client, section, f"cache hits, concurrency {top}", bodies, top, shipped)
        # Not the Procfile's shape: what reserving one message per greenlet costs.
        bodies = [_ai_body(f"bench prefetch {i} {uuid.uuid4().hex}") for i in range(250)]
        extra = ("--prefetch-multiplier", "1")
        self.ai_batch(client, section, "concurrency 50, --prefetch-multiplier 1", bodies, 50, extra)

    def ai_batch(
        self,
        client: ApiClient,
        section: str,
        name: str,
        bodies: list[dict],
        concurrency: int,
        extra: tuple[str, ...] = (),
        *,
        memory: bool = False,
    ) -> Figure:
        print(f"AI jobs, {name}: enqueueing {len(bodies)}")
        ids = submit_many(client, "/api/v1/ai/generate", bodies)
        self.start_worker("worker-ai", "gevent", "ai", concurrency, extra)
        pid = self.procs.pid("worker-ai")
        # CPU from the first message taken, so the worker's start-up is not counted.
        queue = f"{self.prefix}ai"
        wait_until(lambda: self.redis.llen(queue) < len(ids), 60, interval=0.01)
        cpu_before = tree_cpu_seconds(pid)
        with PeakRss(pid) as rss:
            finished = self.wait_terminal(ids, timeout=60 + 3 * len(bodies) / concurrency)
        cpu = tree_cpu_seconds(pid) - cpu_before
        if memory:
            self.rss("worker_ai", "idle after the jobs", tree_rss_bytes(pid))
            self.rss("worker_ai", f"{name} (peak)", rss.peak)
        self.procs.stop("worker-ai")
        succeeded, terminal, seconds = self.job_window(ids)
        ((hits,),) = self.db.query(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[])"
            " AND (result ->> 'from_cache') = 'true'",
            (ids,),
        )
        note = f"{len(ids)} jobs, {seconds:.1f} s; {hits} from cache"
        if succeeded != len(ids):
            note += f"; {succeeded} SUCCESS of {terminal} terminal"
        if not finished:
            note += "; timed out"
        rate = succeeded / seconds if seconds else None
        fig = Figure(section, name, rate, "jobs/s", note=note, cpu_ms=cpu * 1000 / len(ids))
        self.figures.append(fig)
        print(f"  {name}: {rate or 0:,.0f} jobs/s, {fig.cpu_ms:.1f} worker CPU ms/job ({note})")
        return fig

    # -- capacity, baselines and memory (issue 11) --------------------------------

    def figure(self, section: str, name: str) -> Figure | None:
        """A figure measured earlier in this run, by section and name."""
        return next((f for f in self.figures if f.section == section and f.name == name), None)

    def rss(self, process_type: str, state: str, nbytes: int, note: str = "") -> None:
        """One memory figure: resident MiB summed over a process type's processes."""
        self.figures.append(
            Figure(MEMORY, f"{process_type}, {state}", nbytes / 2**20, "MiB", note=note)
        )
        print(f"  memory: {process_type}, {state}: {nbytes / 2**20:,.0f} MiB {note}")

    def crowd(self, label: str, base: str, token: str, ids: list[str]) -> Figure:
        """`crowd_clients` keep-alive clients, each polling a finished job every ~5 s (jittered)."""
        opts = self.options
        print(f"{opts.crowd_clients:,} waiting clients on {label}")
        pid = self.procs.pid(self.servers[base])
        idle = tree_rss_bytes(pid)
        port = int(base.rsplit(":", 1)[1])
        paths = [f"/api/v1/tasks/{i}" for i in ids[:1000]]
        before = tree_cpu_seconds(pid)
        with PeakRss(pid) as rss:
            result = waiting_clients.run(
                "127.0.0.1", port, paths, clients=opts.crowd_clients, interval=opts.crowd_interval,
                ramp=opts.crowd_ramp, duration=opts.crowd_duration,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
        cpu = tree_cpu_seconds(pid) - before
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(result.errors.items()))
        note = (
            f"{result.clients:,} clients opened over {opts.crowd_ramp:g} s, then "
            f"{opts.crowd_duration:g} s; peak {result.connected_peak:,} connected; "
            f"{result.requests:,} answers; errors: {errors or '0'}; "
            f"{result.closed_after_answer:,} connections closed by web after an answer; "
            f"client CPU {result.cpu_seconds:.0f} s"
        )
        fig = Figure(
            CROWD, label, result.requests / result.seconds if result.seconds else None,
            p50_ms=result.percentile(50), p99_ms=result.percentile(99), note=note,
            cpu_ms=cpu * 1000 / max(1, result.requests),
        )  # fmt: skip
        self.figures.append(fig)
        print(f"  {result.summary()}")
        self.rss(label, "idle before the clients", idle)
        per_thousand = (rss.peak - idle) / max(1, result.connected_peak / 1000)
        self.rss(
            label, f"{result.connected_peak:,} clients connected (peak)", rss.peak,
            f"{per_thousand / 2**20:.1f} MiB per 1,000 open connections",
        )  # fmt: skip
        return fig

    def gthread(self, token: str, ids: list[str]) -> dict[str, Figure]:
        """/healthz, poll and the crowd on gunicorn's gthread worker (the previous `web`)."""
        print("the same web on --worker-class gthread (WEB_THREADS threads per worker)")
        base = self.start_web(
            "web-gthread", "api.wsgi:app", self.env, ("--worker-class", "gthread")
        )
        section = "Conveyor API on gunicorn's gthread worker (the previous `web`)"
        auth = {"Authorization": f"Bearer {token}"}
        figs = {
            "health": self.load(
                section, "`GET /healthz`", base, self.script("healthz", ["/healthz"])
            )
        }
        poll = self.script("poll", [f"/api/v1/tasks/{i}" for i in ids[:1000]], headers=auth)
        figs["poll"] = self.load(section, "`GET /api/v1/tasks/{id}` (poll, finished)", base, poll)
        figs["crowd"] = self.crowd("web on gthread", base, token, ids)
        self.procs.stop("web-gthread")
        return figs

    def noop_drain(self) -> Figure:
        """A no-op task drained by Celery's default prefork worker (-c 2): the drain's anchor."""
        n = self.options.drain_jobs
        prefix = f"{self.prefix}noop:"
        print(f"no-op drain: enqueueing {n} tasks")
        celery = noop_app.create_celery(self.redis_url, prefix)
        with celery.producer_or_acquire() as producer:
            for _ in range(n):
                celery.send_task("noop.noop", producer=producer)
        queue, unacked = f"{prefix}{noop_app.QUEUE}", f"{prefix}unacked"
        env = {**self.env, "BENCH_NOOP_REDIS_URL": self.redis_url, "BENCH_NOOP_PREFIX": prefix}
        argv = [
            str(BIN / "celery"), "-A", "bench.noop_app", "worker", "-P", "prefork", "-c", "2",
            "-n", "noop@%h", "--loglevel=WARNING", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.procs.start("worker-noop", argv, env)
        # First message taken → queue and unacked both empty (prefork acks a
        # task as a child starts it; the body then takes microseconds).
        wait_until(lambda: self.redis.llen(queue) < n, 120, interval=0.005)
        started = time.perf_counter()
        cpu_before = tree_cpu_seconds(self.procs.pid("worker-noop"))
        done = wait_until(
            lambda: self.redis.llen(queue) == 0 and self.redis.hlen(unacked) == 0,
            120, interval=0.005,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        cpu = tree_cpu_seconds(self.procs.pid("worker-noop")) - cpu_before
        self.procs.stop("worker-noop")
        celery.close()
        note = f"{n} tasks, prefork -c 2, default prefetch; first taken → last acked"
        if not done:
            note += "; timed out"
        fig = Figure(
            "Ledger worker",
            "no-op task drain (Celery defaults)",
            n / seconds,
            "jobs/s",
            note=note,
            cpu_ms=cpu * 1000 / n,
        )
        self.figures.append(fig)
        print(f"  no-op drain: {fig.rate:,.0f} jobs/s")
        return fig

    def beat_and_flower_memory(self) -> None:
        """Resident memory of the two process types no scenario loads: beat and flower, idle."""
        port = free_port()
        env = {**self.env, "FLOWER_BASIC_AUTH": "bench:bench-only-password"}
        schedule = self.work_dir / "beat-schedule"
        self.procs.start(
            "beat",
            [str(BIN / "celery"), "-A", "workers.app", "--quiet", "beat", "-s", str(schedule),
             "--loglevel=WARNING"],
            env,
        )  # fmt: skip
        self.procs.start(
            "flower",
            [str(BIN / "celery"), "-A", "workers.app", "flower", f"--port={port}",
             "--address=127.0.0.1"],
            env,
        )  # fmt: skip
        try:
            time.sleep(8)  # start-up done, first schedule tick and broker poll made
            for name in ("beat", "flower"):
                self.procs.check_alive(name)
                self.rss(name, "idle", tree_rss_bytes(self.procs.pid(name)))
        finally:
            self.procs.stop("flower")
            self.procs.stop("beat")

    def ai_slow_upstream(self, client: ApiClient) -> Figure | None:
        """The Procfile's worker_ai (-c 100, prefetch 4), a 1 s upstream: ideally 100 jobs/s."""
        if self.upstream is None:
            return None
        section = "AI jobs, the Procfile's worker_ai against a 1 s upstream"
        latency, self.upstream.latency = self.upstream.latency, 1.0
        try:
            n = self.options.ai_slow_jobs
            bodies = [_ai_body(f"bench slow {i} {uuid.uuid4().hex}") for i in range(n)]
            return self.ai_batch(
                client, section, "concurrency 100, --prefetch-multiplier 4", bodies, 100,
                ("--prefetch-multiplier", "4"), memory=True,
            )  # fmt: skip
        finally:
            self.upstream.latency = latency


def _ai_body(prompt: str) -> dict[str, Any]:
    return {"kind": "text", "prompt": prompt, "options": {"operation": "summarize"}}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _cores() -> int:
    return os.cpu_count() or 1


def _percentile(samples: list[float], pct: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else 0.0
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def _batch_sizes(metrics_url: str) -> tuple[float, float] | None:
    """(batches, mean jobs per batch) from a worker's conveyor_ledger_batch_size histogram."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("conveyor_ledger_batch_size_count", "conveyor_ledger_batch_size_sum"):
            values[name] = float(value)
    count = values.get("conveyor_ledger_batch_size_count")
    if not count:
        return None
    return count, values["conveyor_ledger_batch_size_sum"] / count

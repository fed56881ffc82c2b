"""`make bench`: start a private stack on loopback, run every scenario, write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench import (
    event_streams,
    fairness,
    live_views,
    machine,
    report,
    tracing_work,
    tuning_off,
    wrk,
)
from bench import tracing as tracing_bench
from bench.client import ApiClient, login
from bench.report import Figure
from bench.scenarios import PASSWORD, Bench, Options
from bench.stack import ROOT, BenchDatabase, Processes, delete_prefixed_keys
from bench.users import create_users
from infra.settings import Settings

# What one worker_ai (-c 100) can do against a 1 s upstream: 100 slots, 1 job/s each.
IDEAL_AI = Figure("", "ideal", 100.0, "jobs/s")

# Scenario groups `--only` can pick.
GROUPS = (
    "web", "drain", "ai", "streams", "tuning", "live", "tracing", "tracing_work", "fairness",
)  # fmt: skip

# Variables a developer's shell may carry that would point the stack elsewhere.
_INHERITED = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PROMETHEUS_MULTIPROC_DIR", "PORT")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per scenario")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per HTTP scenario")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--drain-jobs", type=int, default=3000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--work-rounds", type=int, default=5, help="tracing_work: rounds each")
    parser.add_argument("--work-submits", type=int, default=600, help="tracing_work: per round")
    parser.add_argument("--submit-users", type=int, default=1000, help="users submits rotate over")
    parser.add_argument("--ledger-concurrency", type=int, default=0, help="0: one per core")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy passes")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated groups ({', '.join(GROUPS)}): a quick partial run whose table is "
        "printed, not written (web also runs drain: its polls need finished jobs)",
    )
    parser.add_argument("--output", default=None, help="default: docs/benchmarks.md (full runs)")
    parser.add_argument(
        "--postgres-admin-dsn",
        default=os.environ.get(
            "BENCH_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    return parser.parse_args(argv)


def _stop_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(143)  # unwinds through the finally blocks that stop everything


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = {g.strip() for g in args.only.split(",") if g.strip()} or set(GROUPS)
    if unknown := only - set(GROUPS):
        print(f"unknown --only group(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "web" in only or "tuning" in only:
        only.add("drain")
    if "tuning" in only:
        only.add("web")  # the default figures the stock ones are compared with
    partial = only != set(GROUPS)
    if args.output is None and not partial:
        args.output = str(ROOT / "docs" / "benchmarks.md")
    wrk_binary = shutil.which("wrk")
    if wrk_binary is None:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Even when started in the background, where the shell ignores SIGINT for us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        repeat=max(1, args.repeat),
        connections=args.connections,
        threads=args.threads,
        drain_jobs=args.drain_jobs,
        latency_jobs=args.latency_jobs,
        submit_users=args.submit_users,
        ledger_concurrency=args.ledger_concurrency,
        profile=not args.no_profile,
    )
    run_id = uuid.uuid4().hex[:10]
    prefix = f"conveyor-bench-{run_id}:"
    redis_client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    redis_client.ping()
    db = BenchDatabase(args.postgres_admin_dsn, "127.0.0.1", f"conveyor_bench_{run_id}")
    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    procs = Processes(work_dir)
    upstream = None
    started = time.monotonic()
    load_before = os.getloadavg()
    speed_before = machine.python_loop_ms()
    print(f"bench run {run_id}: logs and scripts in {work_dir}")
    try:
        db.create()
        from bench.upstream import SlowUpstream

        upstream = SlowUpstream(options.ai_latency).start()
        env = _stack_env(db.url, args.redis_url, prefix, upstream.base_url)
        bench = Bench(options, db, redis_client, args.redis_url, prefix, env, procs, work_dir)
        bench.upstream = upstream
        naive: dict[str, Figure] = {}
        conveyor: dict[str, Figure] = {}
        gthread: dict[str, Figure] = {}
        noop = ai_slow = wallet_on = wallet_off = None
        if "web" in only:
            naive = bench.naive_baseline()
        base = bench.start_web("web", "api.wsgi:app", env)
        client = ApiClient(base)
        client.token = login(client, f"bench_{run_id}", PASSWORD)
        if "web" in only:
            submitters = create_users(env, f"bench_{run_id}_", options.submit_users)
            conveyor = bench.conveyor_web(base, submitters)
        if "drain" in only:
            drained = bench.drain(client)
            bench.latency(client)
            procs.stop("worker")
            bench.profile_drain(client)
            noop = bench.noop_drain()
            bench.beat_and_flower_memory()
        if "web" in only:
            conveyor["poll"] = bench.poll(client.token, base, drained)
            bench.crowd("web (gevent, as the Procfile runs it)", base, client.token, drained)
            gthread = bench.gthread(client.token, drained)
        stock: dict = {}
        if "tuning" in only:
            stock = tuning_off.measure(bench, submitters, client.token, drained)
        if "ai" in only:
            bench.ai(client)
            ai_slow = bench.ai_slow_upstream(client)
            bench.profile_ai(client)
        fair_ratios: list[tuple] = []
        if "fairness" in only:
            fair_ratios = fairness.measure(bench, base, run_id)
        tracing_ratios: list[tuple] = []
        if "tracing" in only:
            # Submit and drain with tracing off, on (100%) and on (1%): bench/tracing.py.
            tracing_ratios = tracing_bench.measure(bench, run_id, PASSWORD, options.drain_jobs)
        if "tracing_work" in only:
            # The same cost as instructions per submit, under valgrind: bench/tracing_work.py.
            tracing_ratios += tracing_work.measure(
                bench, run_id, args.work_rounds, args.work_submits
            )
        if "streams" in only:
            stream_settings = Settings.from_env(env)
            stream_owner, stream_token = event_streams.bench_user(stream_settings)
            bench.figures += event_streams.measure(
                stream_settings, env, procs, stream_token, stream_owner
            )
        if "live" in only:
            bench.figures += live_views.measure(Settings.from_env(env), env, procs, base)
        if "web" in only:
            # Last: it stops `web` (one API server at a time), which the groups above use.
            wallet_on, wallet_off = bench.wallet(client.token, base, client)
        ratios = [
            (
                "Conveyor submit / naive `.delay()` submit",
                conveyor.get("submit"),
                naive.get("submit"),
            ),
            ("Conveyor poll / naive AsyncResult poll", conveyor.get("poll"), naive.get("poll")),
            (
                "Conveyor `/healthz` / naive `/health`",
                conveyor.get("health"),
                naive.get("health"),
            ),
            ("Conveyor submit / naive `/health`", conveyor.get("submit"), naive.get("health")),
            ("`GET /wallet` cache on / cache off", wallet_on, wallet_off),
            ("poll, gevent `web` / gthread", conveyor.get("poll"), gthread.get("poll")),
            ("`/healthz`, gevent `web` / gthread", conveyor.get("health"), gthread.get("health")),
            (
                "ledger drain / no-op task drain (Celery defaults)",
                bench.figure("Ledger worker", "drain rate"),
                noop,
            ),
            ("AI, 1 s upstream, concurrency 100 / ideal 100 jobs/s", ai_slow, IDEAL_AI),
            *tuning_off.ratios(conveyor, stock, bench.figure("Ledger worker", "drain rate")),
            *tracing_ratios,
            *fair_ratios,
        ]
        pg_version = db.query("SHOW server_version")[0][0]
        page = report.markdown(
            command=_command(argv),
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine.describe(pg_version, redis_client, wrk_binary),
            settings={
                **_setup_lines(options),
                "load average (1/5/15 min) before / after": f"{_load(load_before)} / "
                f"{_load(os.getloadavg())} (other work on the box skews every figure)",
                "speed probe before / after": f"{speed_before:.0f} / "
                f"{machine.python_loop_ms():.0f} ms of CPU for a 2,000,000-step Python loop "
                "(best of 3; lower is faster: compare it before comparing two pages' "
                "absolute figures)",
            },
            figures=bench.figures,
            ratios=ratios,
            notes=LIMITS + event_streams.NOTES + live_views.NOTES,
            profile=_profile_section(bench.profiles),
        )
        print()
        print(report.table(bench.figures))
        print(report.ratio_table(ratios))
        if args.output is None:
            for label, text in bench.profiles.items():
                print(f"\n### profile: {label}\n\n{text}")
            print(
                f"\npartial run ({', '.join(sorted(only))}): not written, in "
                f"{time.monotonic() - started:.0f} s"
            )
            return 0
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page + report.kept_section(output, report.HISTORY_HEADING))
        print(f"\nwritten to {args.output} in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        procs.stop_all()
        if upstream is not None:
            upstream.close()
        db.drop()
        delete_prefixed_keys(redis_client, prefix)
        redis_client.close()


def _stack_env(database_url: str, redis_url: str, prefix: str, ai_base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(
        {
            # As compose runs it: production (no per-request query counting, HSTS).
            "CONVEYOR_ENV": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CONVEYOR_REDIS_PREFIX": prefix,
            "SECRET_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
            "RATELIMIT_ENABLED": "false",
            "LOGIN_GENERATES_TRANSACTIONS": "false",
            # The benchmark queues thousands of jobs for one user on purpose.
            "MAX_INFLIGHT_JOBS": "1000000000",
            "QUEUE_MAX_DEPTH": "1000000000",
            "AI_DAILY_CALL_LIMIT": "1000000000",
            "AI_PROVIDER": "openai",
            "AI_API_KEY": "sk-bench-not-a-secret",
            "AI_BASE_URL": ai_base_url,
            "CACHE_ENABLED": "true",
            # A full run outlasts the one-hour default; its tokens must not expire mid-poll.
            "TOKEN_TTL_SECONDS": str(12 * 3600),
        }
    )
    return env


def _load(averages: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in averages)


def _command(argv: list[str] | None) -> str:
    extra = " ".join(argv if argv is not None else sys.argv[1:])
    return f"python -m bench.run {extra}" if extra else "make bench"


def _setup_lines(options: Options) -> dict[str, str]:
    return {
        "load generator": (
            f"wrk, {options.threads} threads, {options.connections} connections, "
            f"{options.warmup:g} s warm-up then {options.repeat} x {options.duration:g} s per "
            "scenario, on the same 2 cores as everything else"
        ),
        "web": "gunicorn -c gunicorn.conf.py (gevent, as the Procfile runs it; WEB_CONCURRENCY "
        "default), CONVEYOR_ENV=production, RATELIMIT_ENABLED=false, LOG_LEVEL=WARNING, bound to "
        "127.0.0.1; the naive app "
        "runs under the same config file; the gthread rows add `--worker-class gthread`",
        "waiting clients": "bench/waiting_clients.py: one asyncio process, raw streams, "
        "HTTP/1.1 keep-alive, loopback only, its own open-files limit raised; each client "
        "polls one of 1,000 finished jobs, then waits 5 s ± 20% after each answer",
        "ledger worker": "celery -A workers.app worker -P prefork -Q ledger,maintenance "
        "(--without-mingle --without-gossip)",
        "AI worker": "celery -A workers.app worker -P gevent -Q ai -c N, AI_PROVIDER=openai "
        "against tests/fakes/openai_server.py on loopback",
        "data": "a fresh PostgreSQL database `conveyor_bench_<id>` (Alembic head), a private "
        "Redis key prefix; both removed at the end",
    }


LIMITS = [
    "Everything shares 2 cores: wrk, gunicorn's workers, PostgreSQL, Redis and (when running) "
    "the Celery workers. HTTP figures are CPU-bound on the whole box, not on any one process, "
    "so they are best read as ratios between scenarios of the same run.",
    "CPU ms/req is, for HTTP rows, the CPU time of all gunicorn processes divided by the "
    "requests served (the figure least disturbed by other load, and the one to compare between "
    "runs); for AI rows, the worker_ai process's CPU from its first message taken to its last "
    "job, divided by the jobs (its start-up not counted).",
    "Submit: group commit (shared/jobs/group_commit.py). Concurrent submits in one web "
    "process share one multi-row INSERT (admission ranked per owner inside the statement, "
    "Idempotency-Key conflicts settled by ON CONFLICT) and one pipelined Redis trip (the "
    "LPUSHes, the PENDING documents, tickets and first events), sent on a connection of the "
    "publisher's own and packed by hiredis (tuning/redis_pipelines.py), each job message filled "
    "into a template of its fixed parts; a submit that finds no flush running flushes at "
    "once, so an idle server adds no wait. The web runs one gevent process per core "
    "(WEB_CONCURRENCY's default), so under wrk's 32 connections a flush carries about eight "
    "requests (twice what two processes per core gave). A batch without Idempotency-Keys "
    "runs as a statement prepared once per connection (infra/prepared.py): planning it had "
    "cost PostgreSQL more than the rows. The 202's body and Location are filled into "
    "templates, and gunicorn sends each answer's head and body in one write "
    "(tuning/gunicorn_one_write.py, for the naive app too). What remains per request is "
    "gunicorn's HTTP parsing, Flask, the per-request hooks, auth and validation; PostgreSQL's "
    "share is the row itself (six indexes, the owner's foreign key, the in-flight count) and "
    "one commit per flush. All of a process's requests tend to land in the same batch, so "
    "the process idles while that batch's commit is in flight.",
    "Poll: one Redis HMGET; a terminal document is sent as stored. What remains is JWT "
    "verification, Flask itself and gunicorn's HTTP handling. The per-request hooks are one "
    "WSGI wrapper (request id, X-Process-Time, the fixed security headers as plain tuples "
    "that gunicorn checks once per process, the in-flight gauge, latency histogram and "
    "access line, the body-size guard on Content-Length) and one Flask hook; flask-compress "
    "is consulted only for bodies over 500 bytes; a request's URL adapter reuses what its "
    "Host, scheme and mount point gave the first time (Flask parses and IDNA-encodes the "
    "Host on every request). Gunicorn's own access line is off: the logging config had "
    "switched it on, a tenth of a /healthz's CPU spent formatting lines that were then "
    "discarded. The naive app runs under the same gunicorn.conf.py and gains the same. The "
    "bench runs CONVEYOR_ENV=production, as compose does: development would also count "
    "every request's queries (X-Query-Count).",
    "Naive baseline: `.delay()` also subscribes the web process to the result's pub/sub "
    "channel (redis result backend), which Conveyor's publish skips (`ignore_result`).",
    "Drain: the Procfile's prefork worker (-c 2) drains ledger.transaction jobs in batches "
    "(tuning/celery_ledger_batches.py): its main process holds the messages that arrive while both "
    "pool processes are busy and hands them over together; a pool process posts a batch with "
    "one database call (conveyor_post_ledger_jobs: one transaction, one commit) and announces "
    "it with one pipelined Redis trip, and the main process acks the batch in one more. What "
    "remains per job is the main process's share of Celery's consumer (a BRPOP per message and "
    "kombu's unacked record, one Redis round trip each), the job's own SQL (a row lock, the "
    "wallet update, the entry insert, the job update) and its Redis writes (document, events, "
    "notification). The no-op anchor is Celery's defaults (prefetch 4 per process, early acks, "
    "no result backend) running a task that does nothing: Celery's own per-message cost, which "
    "batching amortises and the anchor pays per message (a Request, the trip to a pool "
    "process and back, the tracer).",
    "Latency: dominated by the worker's broker poll wake-up and the job's transactions; "
    "the client's 2 ms poll interval adds up to 2 ms.",
    "gevent against wrk's 32 connections: each is always busy and stays with the worker that "
    "accepted it. The workers share them evenly (tuning/gunicorn_balance.py); before that, 32 "
    "connections opened at once split as unevenly as 24/8 and a run's rate followed the split "
    "(9,800 against 11,900 req/s for /health). Within a worker, a connection whose next request "
    "has already arrived is served again before the worker looks at its other connections, so "
    "some wait hundreds of ms: the long p99 of these rows, in both apps, where gthread's is "
    "tens. Yielding after every request evens that out but cost 16-20% of /health's rate, so "
    "it is not done. The waiting-clients rows are the shape `web` is sized for.",
    "Ten thousand waiting clients: 10,000 clients / ~5 s is about 2,000 polls/s, close to what "
    "the whole box serves (see the poll row), with the client process itself on the same two "
    "cores (its CPU is in the note). The gevent worker keeps an idle connection as a parked "
    "greenlet and a socket; at most 64 requests per worker run inside the app at once "
    "(gunicorn.conf.py), so the Redis pool (200) never runs dry and a poll never falls back "
    "to PostgreSQL. gthread holds idle keep-alive connections in its poller but serves them "
    "with 4 threads per worker, so under this load requests queue behind busy threads. A "
    "listen backlog of 4,096 keeps the SYNs of clients connecting at once (gunicorn's 2,048 "
    "dropped some, and a dropped SYN waits 1, 3, 7 s to retry). Every process tunes CPython's "
    "cyclic collector once it has loaded (tuning/collector.py: `gc.freeze()`, the young "
    "generation every 50,000 allocations instead of 700): each waiting client's parked "
    "greenlet and parser outlive their request and filled the older generations, so a "
    "worker ran a full collection every few seconds, 120-220 ms each (every request it held "
    "waited), about a tenth of its CPU.",
    "Memory: resident set (RSS) summed over a process type's processes (gunicorn master and "
    "workers; the prefork parent and children). Per 1,000 open connections is (peak with the "
    "clients - idle before them) / thousands connected. beat and flower are measured idle "
    "(nothing loads them in this run: flower would turn on every worker's task events).",
    "AI against 1 s: 100 greenlets, so 100 jobs/s at most. The worker is one process on one "
    "core. A job's CPU is a claim statement and a finish statement (autocommit, one each, "
    "prepared once per connection), its status writes (STARTED and the first progress go "
    "with the AI cache's lookup, the cache counters with the outcome), the lookup (one trip), its "
    "single-flight (the lock taken with the read, released with the store: two trips), the "
    "quota check, the upstream call on a kept-alive http.client connection (httpx's layers cost "
    "about three times as much per call) and Celery's own per-message work. The fake upstream "
    "sets TCP_NODELAY: with Nagle's algorithm on, each answer's body had waited ~40 ms for the "
    "client's delayed ACK of its head. A job's claim to finish then averages 1.016-1.028 s. A "
    "fixed 1 s upstream makes jobs finish in waves: the first hundred start within ~130 ms of "
    "each other, each job's few ms of CPU queue behind its wave's in the one process, and the "
    "slots drift apart, so the last hundred of the 1,000 finish over 0.5-0.7 s.",
    "AI: the upstream's 200 ms caps a slot at 5 jobs/s, so concurrency / 0.2 s at most. With "
    "`worker_prefetch_multiplier=1` the gevent worker (Celery's synchronous consume loop) stops "
    "asking Redis for messages while every slot is busy and looks again only when its 2 s "
    "poll times out, so at worst each slot runs about one job per 2 s: concurrency / 2 "
    "jobs/s. Whether a run hits that depends on timing (some runs do, some do not); the "
    "`--prefetch-multiplier 4` rows cannot stall that way. Beyond that the "
    "worker's one core (Python CPU per job) is the ceiling.",
]


def _profile_section(profiles: dict[str, str]) -> str:
    if not profiles:
        return ""
    parts = [
        "py-spy (`record --subprocesses --nonblocking --gil`, 250 Hz) on the gunicorn master, "
        "or on a Celery worker, during an extra, unreported run of the same load. `--gil` "
        "samples only the thread holding the GIL, so this is where the processes' CPU goes "
        "(waits on PostgreSQL and Redis do not show). For the web, shares are of samples taken "
        "inside a request (Flask's `wsgi_app`); for workers, of all samples of the worker's "
        "process tree. A function counts once per sample wherever it appears in the stack."
    ]
    for label, text in profiles.items():
        parts += ["", f"### {label}", "", text]
    return "\n".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process stopped, database and keys removed", file=sys.stderr)
        sys.exit(130)

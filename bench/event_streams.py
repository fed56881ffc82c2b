"""`make bench`, event streams: open streams one `events` process holds, its memory, and delay.

For each count (1,000 and 10,000): that many jobs of one user (rows written
through the domain, each with a live STARTED document), one stream per job
from one asyncio client process, all open at once on one events process (the
Procfile's line, bound to loopback). Then status writes, through the same
call a worker makes (`StatusStore.progress`), go to sampled jobs one at a
time, and the delay to the client that follows the job is measured; the
events process's resident memory is read before and after the streams open.
Standalone: `python -m bench.event_streams` (prints the table).
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from honcho.environ import parse_procfile

from bench.report import Figure
from bench.stack import ROOT, Processes, free_port, wait_http
from bench.streams import StreamResult, open_many, raise_open_files_limit

SECTION = "Event streams (one events process)"
SAMPLES = 300
SAMPLE_INTERVAL = 0.02  # s between sampled writes: one at a time, never a burst


def events_argv(port: int, connections: int) -> list[str]:
    """The Procfile's `events` command, bound to loopback on `port`."""
    command = parse_procfile((ROOT / "Procfile").read_text()).processes["events"]
    command = command.replace("${EVENTS_PORT:-8001}", str(port))
    command = command.replace("${EVENTS_WORKER_CONNECTIONS:-10000}", str(connections))
    command = command.replace("${WEB_BIND_HOST:-0.0.0.0}", "127.0.0.1")
    argv = shlex.split(command)
    assert argv[0] == "exec", argv
    return [str(Path(sys.executable).parent / argv[1]), *argv[2:]]


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _rss(pid: int) -> int:
    """Resident bytes of the gunicorn master and its worker."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def create_jobs(settings, owner_id: int, count: int) -> list[dict]:
    """`count` job rows of `owner_id`, each with a live STARTED document (no broker involved)."""
    from shared.jobs import create_job
    from shared.resources import Resources

    res = Resources.build(settings)
    documents = []
    try:
        with res.autocommit_engine.connect() as conn:
            for _ in range(count):
                submission = create_job(
                    conn,
                    owner_id=owner_id,
                    kind="ledger.transaction",
                    params={"type": "credit", "amount": 1},
                    ttl_seconds=3600,
                )
                documents.append({**submission.status, "state": "STARTED", "message": "started"})
        for document in documents:
            res.statuses.write(owner_id, document)
    finally:
        res.close()
    return documents


def measure(
    settings,
    env: dict[str, str],
    procs: Processes,
    token: str,
    owner_id: int,
    counts: Sequence[int] = (1000, 10_000),
) -> list[Figure]:
    """One Figure per count: streams held, delay p50/p99, memory per 1,000 streams."""
    from shared.resources import Resources

    raise_open_files_limit(max(counts) * 2 + 1000)  # the child inherits it
    figures = []
    for count in counts:
        documents = create_jobs(settings, owner_id, count)
        port = free_port()
        name = f"events-{count}"
        procs.start(name, events_argv(port, count + 500), env)
        wait_http(f"http://127.0.0.1:{port}/healthz", check=lambda n=name: procs.check_alive(n))
        time.sleep(1.0)  # let the freshly booted worker settle before the baseline
        before = _rss(procs.pid(name))
        res = Resources.build(settings)
        try:
            figures.append(_run(count, port, token, owner_id, documents, res, procs, name, before))
        finally:
            res.close()
            procs.stop(name)
    return figures


def _run(count, port, token, owner_id, documents, res, procs, name, before) -> Figure:
    sent: dict[str, float] = {}  # "task:message" -> perf_counter at the write
    delays: list[float] = []

    def on_event(result: StreamResult) -> None:
        _id, _kind, data = result.events[-1]
        started = sent.pop(f"{data['task_id']}:{data['message']}", None)
        if started is not None:
            delays.append(time.perf_counter() - started)

    loop = asyncio.new_event_loop()
    state: dict[str, object] = {}
    stop = asyncio.Event()

    async def hold() -> None:
        paths = [f"/api/v1/tasks/{doc['task_id']}/events" for doc in documents]
        results, tasks = await open_many(
            "127.0.0.1", port, paths, {"Authorization": f"Bearer {token}"},
            connect_batch=500, on_event=on_event, stop=stop,
        )  # fmt: skip
        state["results"] = results
        await asyncio.wait(tasks)

    runner = threading.Thread(target=lambda: loop.run_until_complete(hold()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    opened_in = time.monotonic()
    while True:
        results = state.get("results")
        ready = results is not None and all(r.events or r.error for r in results)
        if ready or time.monotonic() > deadline:
            break
        procs.check_alive(name)
        time.sleep(0.1)
    opened_in = time.monotonic() - opened_in
    results = state.get("results") or []
    held = sum(1 for r in results if r.status == 200 and r.events and not r.error)
    errors = sorted({r.error for r in results if r.error})
    after = _rss(procs.pid(name))
    for step, doc in enumerate(random.sample(documents, min(SAMPLES, len(documents)))):
        message = f"bench {step}"
        sent[f"{doc['task_id']}:{message}"] = time.perf_counter()
        res.statuses.progress(owner_id, doc, 50, message)
        time.sleep(SAMPLE_INTERVAL)
    settle = time.monotonic() + 5
    while sent and time.monotonic() < settle:
        time.sleep(0.05)
    loop.call_soon_threadsafe(stop.set)
    runner.join(timeout=30)
    per_thousand = (after - before) / max(held, 1) * 1000 / 2**20
    note = (
        f"{held:,} of {count:,} streams held (opened in {opened_in:.1f} s); "
        f"RSS {before / 2**20:.0f} → {after / 2**20:.0f} MiB, {per_thousand:.1f} MiB per "
        f"1,000 streams; {len(delays)} of {SAMPLES} sampled writes delivered"
    )
    if errors:
        note += f"; client errors: {', '.join(errors[:3])}"
    return Figure(
        SECTION,
        f"{count:,} open streams: status write → event at its client",
        float(held),
        unit="streams",
        p50_ms=statistics.median(delays) * 1000 if delays else None,
        p99_ms=_percentile(delays, 0.99) * 1000 if delays else None,
        note=note,
    )


NOTES = [
    "Event streams: one gunicorn gevent process (the Procfile's `events` line) holds the "
    "streams; the client is one asyncio process speaking HTTP/1.0 on loopback. Delay is "
    "measured from just before `StatusStore.progress` (the worker's own call: document, "
    "per-job, per-user and firehose XADD in one Lua call) to the event's arrival at the one "
    "client following that job, one write every 20 ms. The events process's reader is one "
    "XREAD BLOCK on the firehose for all streams. Memory is the resident size of the events "
    "master and worker before and after the streams opened, per 1,000 streams. 10,000 is not "
    "the ceiling: the box's hard limit of 20,000 open files per process (the bench raises its "
    "soft limit to it, and the events process inherits it) would stop the client and the "
    "server near 20,000 each, and at about 31 KiB per stream (a greenlet, gunicorn's parser "
    "and the WSGI environ, the generator) 20,000 streams need about 600 MiB. The p99 grows "
    "with the number of streams because each keep-alive tick and every write share one "
    "process and one core.",
]


def main() -> int:
    """Standalone: a private database and prefix on the local servers, then the table."""
    import secrets
    import uuid

    import redis

    from bench.report import table
    from bench.stack import BenchDatabase, delete_prefixed_keys
    from infra.settings import Settings

    run_id = uuid.uuid4().hex[:10]
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"conveyor-bench-{run_id}:"
    db = BenchDatabase(
        os.environ.get(
            "BENCH_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        ),
        "127.0.0.1",
        f"conveyor_bench_{run_id}",
    )
    work_dir = Path(f"/tmp/conveyor-bench-events-{run_id}")
    work_dir.mkdir(parents=True)
    procs = Processes(work_dir)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PORT", "PROMETHEUS_MULTIPROC_DIR")},
        "CONVEYOR_ENV": "development",
        "DATABASE_URL": db.url,
        "REDIS_URL": redis_url,
        "CONVEYOR_REDIS_PREFIX": prefix,
        "SECRET_KEY": secrets.token_hex(32),
        "LOG_LEVEL": "WARNING",
        "RATELIMIT_ENABLED": "false",
        "LOGIN_GENERATES_TRANSACTIONS": "false",
    }
    try:
        db.create()
        settings = Settings.from_env(env)
        owner_id, token = bench_user(settings)
        figures = measure(settings, env, procs, token, owner_id)
        print(table(figures))
        return 0
    finally:
        procs.stop_all()
        db.drop()
        delete_prefixed_keys(client, prefix)
        client.close()


def bench_user(settings) -> tuple[int, str]:
    """A user of the run and a bearer token for it, through the domain."""
    from shared import accounts
    from shared.resources import Resources

    res = Resources.build(settings)
    try:
        with res.sessions.begin() as session:
            user = accounts.register(session, res.hasher, "bench_streams", "bench-password-123",
                                     settings.default_currency)  # fmt: skip
            owner_id = user.id
            token = accounts.issue_token(settings.signing_key, user, settings.token_ttl_seconds)
    finally:
        res.close()
    return owner_id, token


if __name__ == "__main__":
    raise SystemExit(main())

"""Conveyor with CONVEYOR_TUNING=off beside the default, in the same run (docs/tuning.md).

A second web process and a second prefork worker run the stock libraries
(every speed adjustment of tuning/ off; the repairs stay): `/healthz`, the
submit and the poll through wrk as for the default web, and a ledger drain
of the same size, so the page can say what the tuning buys and what an
operator who turns it off after a library upgrade gives up.
"""

from __future__ import annotations

import json
import os
import time

from bench.client import ApiClient, submit_many
from bench.report import Figure
from bench.scenarios import CREDIT, Bench
from bench.stack import free_port, tree_cpu_seconds, wait_http

SECTION = "Conveyor with CONVEYOR_TUNING=off"


def measure(bench: Bench, submitters: list[str], token: str, finished: list[str]) -> dict:
    """The stock web's health, submit and poll, and a stock worker's drain; by row name."""
    env = {**bench.env, "CONVEYOR_TUNING": "off"}
    base = bench.start_web("web-stock", "api.wsgi:app", env)
    print("Conveyor with CONVEYOR_TUNING=off (stock libraries)")
    figures: dict[str, Figure | None] = {}
    health = bench.script("healthz-stock", ["/healthz"])
    figures["health"] = bench.load(SECTION, "`GET /healthz`", base, health)
    submit = bench.script(
        "submit-stock",
        ["/api/v1/transactions"],
        method="POST",
        body=json.dumps(CREDIT, separators=(",", ":")),
        headers={"Content-Type": "application/json"},
        tokens=submitters,
    )
    figures["submit"] = bench.load(SECTION, "`POST /api/v1/transactions` (submit)", base, submit)
    bench.purge("ledger")
    auth = {"Authorization": f"Bearer {token}"}
    poll = bench.script("poll-stock", [f"/api/v1/tasks/{i}" for i in finished[:1000]], headers=auth)
    figures["poll"] = bench.load(SECTION, "`GET /api/v1/tasks/{id}` (poll, finished)", base, poll)
    client = ApiClient(base)
    client.token = token
    figures["drain"] = _drain(bench, client, env)
    bench.procs.stop("web-stock")
    return figures


def _drain(bench: Bench, client: ApiClient, env: dict[str, str]) -> Figure | None:
    """The default run's drain, published by the stock web and run by a stock worker."""
    n = bench.options.drain_jobs
    print(f"  stock ledger drain: enqueueing {n} jobs")
    ids = submit_many(client, "/api/v1/transactions", [CREDIT] * n)
    concurrency = bench.options.ledger_concurrency or (os.cpu_count() or 1)
    metrics_port = free_port()
    bench.start_worker(
        "worker-stock", "prefork", "ledger,maintenance", concurrency,
        env={**env, "WORKER_METRICS_PORT": str(metrics_port)},
    )  # fmt: skip
    pid = bench.procs.pid("worker-stock")
    wait_http(f"http://127.0.0.1:{metrics_port}/metrics")
    cpu_before = tree_cpu_seconds(pid)
    if not bench.wait_terminal(ids, timeout=max(180.0, n / 10)):
        bench.procs.check_alive("worker-stock")
    cpu = tree_cpu_seconds(pid) - cpu_before
    succeeded, terminal, seconds = bench.job_window(ids)
    bench.procs.stop("worker-stock")
    time.sleep(0.5)
    rate = succeeded / seconds if seconds else None
    note = f"{n} jobs, prefork -c {concurrency}, {seconds:.1f} s first start → last finish"
    if succeeded != n:
        note += f"; only {succeeded} SUCCESS ({terminal} terminal)"
    figure = Figure(SECTION, "ledger drain rate", rate, "jobs/s", note=note, cpu_ms=cpu * 1000 / n)
    bench.figures.append(figure)
    print(f"  drained {succeeded}/{n} in {seconds:.1f} s: {rate or 0:,.0f} jobs/s")
    return figure


def ratios(on: dict, off: dict, drain_on: Figure | None) -> list[tuple[str, object, object]]:
    """The page's rows: each default figure against its CONVEYOR_TUNING=off twin."""
    return [
        ("submit, tuning on / off", on.get("submit"), off.get("submit")),
        ("poll, tuning on / off", on.get("poll"), off.get("poll")),
        ("`/healthz`, tuning on / off", on.get("health"), off.get("health")),
        ("ledger drain, tuning on / off", drain_on, off.get("drain")),
    ]

"""Tracing's cost as work: the instructions the web runs per submit, counted by valgrind.

CPU time on a shared 2-core box moves by about ±5% from one round to the next,
which hides a cost of a few percent (bench/tracing.py; docs/tracing.md,
"Cost"). An instruction count does not move with load. Here the web runs as
the Procfile runs it (gunicorn, gevent, one worker) under valgrind's
callgrind, which counts the user-space instructions the worker executes.
Before each round the count is zeroed (`callgrind_control -z`), 8 clients
send `--work-submits` credits at once (so the group commit batches them as in
production), and the round's count is dumped and divided by the submits. A
fixed PYTHONHASHSEED keeps dict layouts, so a configuration's rounds agree
to about 0.5%; each figure is the median of its rounds.

Configurations: off; on with 0% sampling (the path every unsampled request
takes, alone); on at 1%; on at 100%. Each runs in a web of its own, one after
another (a count does not depend on what else the machine runs). The ratios
are off's instructions per submit over each configuration's: below 1 is the
cost. A fifth line weighs the 0% and 100% counts (0.99 and 0.01): what 1%
costs with the sampled requests exported in full batches. Not counted: the
kernel's work (tracing adds no system call to an unsampled request; the web
spends about 7% of its CPU in the kernel) and the OTLP sink's. At 1% the
valgrind-slowed web samples only a few requests per export interval, so its
exports are smaller, and cost more per span, than a web taking production
traffic would send: the 1% figure leans high.

Needs valgrind (`apt-get install -y valgrind`); without it the group is
skipped with a message.
"""

from __future__ import annotations

import glob
import json
import shutil
import statistics
import subprocess
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from bench.report import Figure
from bench.stack import free_port, gunicorn_argv, wait_http
from bench.tracing import CONFIGS as TRACED
from bench.tracing import otlp_sink
from bench.users import create_users

SECTION = "Tracing: instructions per submit (valgrind)"
CONFIGS = (
    ("off", {}),
    ("on, 0% sampled (the unsampled path)",
     {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}),
    *((label, variables) for label, variables in TRACED[1:]),
)  # fmt: skip
CLIENTS = 8
UNIT = "submits per 10^9 instructions"
INSTALL_HINT = "valgrind is not installed: `apt-get install -y valgrind` (Debian/Ubuntu)"
BODY = json.dumps({"type": "credit", "amount": 100, "description": "bench"})


def available() -> bool:
    return bool(shutil.which("valgrind") and shutil.which("callgrind_control"))


def measure(bench: Any, run_id: str, rounds: int, submits: int) -> list[tuple]:
    """Each configuration's instructions per submit, and off's over each as ratios."""
    if not available():
        print(f"tracing work: skipped, {INSTALL_HINT}")
        return []
    figures: dict[str, Figure] = {}
    with otlp_sink() as sink:
        for index, (label, variables) in enumerate(CONFIGS):
            env = {**bench.env, **variables, "WEB_CONCURRENCY": "1", "PYTHONHASHSEED": "0"}
            if variables:
                env.update(
                    OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_ENDPOINT=sink,
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                )
            tokens = create_users(env, f"bench_{run_id}_w{index}_", 64)
            counts = _rounds(bench, f"web-work-{index}", env, tokens, rounds, submits)
            per_submit = statistics.median(counts)
            print(f"  tracing {label}: {per_submit / 1000:,.1f}k instructions per submit "
                  f"(rounds: {', '.join(f'{c / 1000:,.1f}k' for c in counts)})")  # fmt: skip
            figures[label] = Figure(
                SECTION, f"submit work, tracing {label}", 1e9 / per_submit, UNIT,
                note=f"{per_submit / 1000:,.1f}k instructions per submit, median of {rounds} "
                f"rounds of {submits}",
                runs=[1e9 / count for count in counts],
            )  # fmt: skip
    unsampled, full = figures[CONFIGS[1][0]], figures[TRACED[1][0]]
    if unsampled.rate and full.rate:
        # 1 in 100 requests pays the sampled cost, as exported in the 100% web's full
        # batches: the 1% figure without the valgrind-slowed web's small exports.
        expected = 0.99 / unsampled.rate + 0.01 / full.rate  # instructions per submit / 1e9
        figures["on, 1% expected from 0% and 100%"] = Figure(
            SECTION, "submit work, tracing on, 1% expected from 0% and 100%", 1 / expected,
            UNIT, note=f"{expected * 1e6:,.1f}k instructions per submit: 0.99 x 0% + 0.01 x 100%",
        )  # fmt: skip
    bench.figures.extend(figures.values())
    off = figures["off"]
    return [
        (f"submit work, tracing {label} / off", figure, off)
        for label, figure in figures.items()
        if label != "off"
    ]


def _rounds(
    bench: Any, name: str, env: dict[str, str], tokens: list[str], rounds: int, submits: int
) -> list[float]:
    """Instructions per submit of each round, in a web under callgrind (stopped afterwards)."""
    out = bench.work_dir / name
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    valgrind = [
        "valgrind", "--tool=callgrind", "--trace-children=yes", "--dump-line=no",
        f"--callgrind-out-file={out}/callgrind.%p",
    ]  # fmt: skip
    process = bench.procs.start(name, valgrind + gunicorn_argv("api.wsgi:app", port), env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", timeout=600, check=lambda: bench.procs.check_alive(name))
        worker = _worker_of(process.pid)
        _submit(port, tokens, CLIENTS * 25)  # warm-up: imports, the pool, the first plans
        counts = []
        for _ in range(rounds):
            subprocess.run(["callgrind_control", "-z", str(worker)], check=True,
                           capture_output=True)  # fmt: skip
            sent = _submit(port, tokens, submits)
            counts.append(_dump(out, worker) / sent)
        return counts
    finally:
        bench.procs.stop(name, timeout=120)


def _worker_of(master: int) -> int:
    """The gunicorn worker: the master's one child (valgrind follows it through the fork)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        children = found.stdout.split()
        if children:
            return int(children[0])
        time.sleep(0.5)
    raise RuntimeError("the web's worker did not start under valgrind")


def _dump(out: Path, worker: int) -> int:
    """Dump `worker`'s count since it was zeroed and read the dump's total instructions."""
    before = set(glob.glob(f"{out}/callgrind.{worker}*"))
    subprocess.run(["callgrind_control", "-d", str(worker)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(set(glob.glob(f"{out}/callgrind.{worker}*")) - before):
            for line in Path(path).read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump for {worker}")


def _submit(port: int, tokens: list[str], total: int) -> int:
    """About `total` credits from CLIENTS keep-alive connections at once: how many (all 202s)."""
    failures: list[str] = []

    def client(k: int) -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            for i in range(total // CLIENTS):
                token = tokens[(k * 7 + i) % len(tokens)]
                connection.request("POST", "/api/v1/transactions", BODY, {
                    "Content-Type": "application/json", "Authorization": f"Bearer {token}",
                })  # fmt: skip
                response = connection.getresponse()
                response.read()
                if response.status != 202:
                    failures.append(str(response.status))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"submits refused under valgrind: {sorted(set(failures))}")
    return total // CLIENTS * CLIENTS

"""`python -m chaos [--only NAME ...]`: run the chaos scenarios, one figure line each.

Exits 0 when every invariant held in every scenario run, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

from chaos.scenario import Context, Result

# name -> module with run(ctx) -> Result, in the order they run.
SCENARIOS = {
    "worker-kills": "chaos.worker_kills",
    "redis-restart": "chaos.redis_restart",
    "postgres-outage": "chaos.postgres_outage",
    "lost-host": "chaos.lost_host",
    "failover": "chaos.failover",
    "fairness": "chaos.fairness",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument(
        "--only", action="append", choices=list(SCENARIOS), metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )  # fmt: skip
    parser.add_argument(
        "--postgres-admin-dsn",
        default=os.environ.get(
            "CHAOS_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        ),
        help="the shared server where scenarios that do not stop PostgreSQL create their database",
    )
    return parser.parse_args(argv)


def _stop_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(143)  # unwinds through the finally blocks that stop everything


def run_one(name: str, run_id: str, work_root: Path, admin_dsn: str) -> Result:
    ctx = Context(name, run_id, work_root / name, admin_dsn)
    try:
        return importlib.import_module(SCENARIOS[name]).run(ctx)
    except Exception as exc:  # report it as this scenario's failure, run the next
        (ctx.work_dir / "traceback.txt").write_text(traceback.format_exc())
        return Result(name, {"elapsed": ctx.elapsed()}, [f"scenario could not run: {exc!r}"])
    finally:
        ctx.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces, a PostgreSQL cluster run as postgres)")
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_id = uuid.uuid4().hex[:8]
    work_root = Path(tempfile.mkdtemp(prefix=f"conveyor-chaos-{run_id}-"))
    print(f"chaos run {run_id}: logs in {work_root}", flush=True)
    started = time.monotonic()
    results = []
    for name in args.only or list(SCENARIOS):
        result = run_one(name, run_id, work_root, args.postgres_admin_dsn)
        results.append(result)
        print(result.line(), flush=True)
        for violation in result.violations:
            print(f"  - {violation}", flush=True)
    failed = [r.name for r in results if not r.ok]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "every invariant held"
    print(f"chaos: {len(results)} scenarios in {time.monotonic() - started:.0f} s; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(
            "chaos: interrupted; every process stopped, namespaces and data removed",
            file=sys.stderr,
        )
        sys.exit(130)

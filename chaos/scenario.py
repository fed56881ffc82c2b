"""What every scenario shares: its context (processes, work dir, clean-up) and its result line."""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import invariants
from chaos.load import Load
from chaos.stack import ChildProcesses, alive

# Users per scenario, each with its own wallet; jobs are spread over them.
USERS = 8
FUNDING = 20_000
# After the last submission, every accepted job must be terminal within this
# long: a dead worker's messages return after BROKER_VISIBILITY_TIMEOUT (20 s)
# plus one restore scan, a lost publish after REDISPATCH_AFTER_SECONDS (30 s)
# plus one beat interval (60 s).
SETTLE_SECONDS = 150.0


@dataclass
class Result:
    """One scenario's figures and the invariants it broke (none: ok)."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        figures = " ".join(f"{key}={value}" for key, value in self.figures.items())
        verdict = "ok" if self.ok else f"FAILED({len(self.violations)})"
        return f"chaos: {self.name} {figures} invariants={verdict}".replace("  ", " ")


@dataclass
class Context:
    """A scenario's private resources; `close()` stops every process, then runs clean-ups."""

    name: str
    run_id: str
    work_dir: Path
    postgres_admin_dsn: str
    procs: ChildProcesses = field(init=False)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.procs = ChildProcesses(self.work_dir)
        self.started = time.monotonic()

    def later(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` at close, after every process stopped (newest first)."""
        self.cleanups.append(cleanup)

    def close(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            for cleanup in reversed(self.cleanups):
                try:
                    cleanup()
                except Exception:  # one failed clean-up must not skip the rest
                    traceback.print_exc(file=sys.stderr)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f}s"


def check(
    load: Load, db: invariants.Database, settle: float = SETTLE_SECONDS
) -> tuple[list[str], Counter]:
    """Every invariant on the scenario's jobs; (violations, outcome counts)."""
    ids = list(load.accepted)
    violations = list(load.violations)
    violations += invariants.wait_terminal(db, ids, settle)
    violations += invariants.ledger_violations(db, ids)
    violations += invariants.api_violations(load, db, ids)
    return violations, invariants.outcomes(db, ids)


def common_figures(load: Load, counts: Counter, db: invariants.Database) -> dict[str, Any]:
    """jobs (202'd), their outcomes, the submissions refused with a 503, the slowest job."""
    return {
        "jobs": len(load.accepted),
        "success": counts["SUCCESS"],
        "failure": counts["FAILURE"],
        "refused-503": load.refused(),
        "polls": load.polls,
        "slowest-job": f"{invariants.slowest_job(db, list(load.accepted)):.0f}s",
    }


def still_running(ctx: Context, name: str, pid: int) -> list[str]:
    """A violation if the process `name` (started as `pid`) is gone or was replaced."""
    if ctx.procs.pid(name) == pid and alive(pid):
        return []
    return [f"{name} (pid {pid}) did not survive the fault:\n{ctx.procs.log_tail(name)}"]


def recovery_after(db: invariants.Database, ids: list[str], moment: float) -> str:
    """Seconds from `moment` until the last of `ids` finished ("never": some did not)."""
    if not ids:
        return "-"
    times = invariants.finish_times(db, ids)
    if len(times) < len(ids):
        return "never"
    return f"{max(0.0, max(times) - moment):.0f}s"


def first_finish_after(db: invariants.Database, ids: list[str], moment: float) -> str:
    """Seconds from `moment` until the first job finished after it ("never" if none)."""
    later = [t for t in invariants.finish_times(db, ids) if t > moment]
    return f"{min(later) - moment:.1f}s" if later else "never"


@dataclass
class OneHostStack:
    """web, beat and one supervised worker on a private database and Redis, with its load."""

    conveyor: Any
    base: str
    worker: int
    beat: int
    load: Load


def one_host_stack(
    ctx: Context,
    database_url: str,
    redis_url: str,
    *,
    user_prefix: str,
    jobs: int,
    seed: int,
    rate: float,
    allowed_503: frozenset[str],
) -> OneHostStack:
    """Start the processes, create and fund the users, and start the paced load."""
    from bench.users import create_users
    from chaos.load import fund_users, plan
    from chaos.stack import Conveyor, conveyor_env

    env = conveyor_env(database_url, redis_url, ctx.work_dir)
    conveyor = Conveyor(ctx.procs, env)
    base = conveyor.start_web()
    conveyor.start_beat()
    conveyor.start_worker("worker")
    conveyor.wait_worker_ready("worker")
    worker = conveyor.worker_pid("worker")
    beat = ctx.procs.pid("beat")
    tokens = create_users(env, user_prefix, USERS)
    load = Load(
        base, tokens, plan(jobs, len(tokens), seed=seed), rate=rate, allowed_503=allowed_503
    )
    load.accepted.update(fund_users(base, tokens, FUNDING))
    load.start()
    return OneHostStack(conveyor, base, worker, beat, load)

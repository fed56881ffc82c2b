"""Every job kind, declared once: its name, queue, time limits and whether a stuck run may rerun.

The API's routing (`KIND_QUEUES`), Celery's task routes (celeryconfig), each
task's time limits (workers/tasks/) and the housekeeping sweeps
(shared/maintenance.py) all read these declarations; nothing spells a kind's
queue or limits a second time. README "Adding a job kind" walks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def ai_time_limits(ai_timeout_seconds: float) -> tuple[float, float]:
    """(soft, hard) seconds for one AI attempt with `ai_timeout_seconds` per upstream call.

    An attempt may first wait for an identical request another worker is
    computing (its single-flight lock lives timeout + 15 s), then make its own
    call; the rest is slack for Redis and the database.
    """
    soft = 2 * ai_timeout_seconds + 30
    return soft, soft + 15


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as every part of Conveyor sees it."""

    name: str
    queue: str
    # (soft, hard) time limits in seconds, given AI_TIMEOUT_SECONDS.
    time_limits: Callable[[float], tuple[float, float]]
    # A run stuck past its hard limit is published again (the job's effect is
    # keyed by (job, seq), so a rerun cannot apply it twice); else it fails.
    rerun_when_stuck: bool = False

    def limits(self, ai_timeout_seconds: float) -> tuple[float, float]:
        return self.time_limits(ai_timeout_seconds)


def _fixed(soft: float, hard: float) -> Callable[[float], tuple[float, float]]:
    return lambda _ai_timeout: (soft, hard)


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("ledger.transaction", "ledger", _fixed(30, 60), rerun_when_stuck=True),
        JobKind("ledger.random", "ledger", _fixed(60, 90), rerun_when_stuck=True),
        JobKind("ai.text", "ai", ai_time_limits),
        JobKind("ai.presentation", "ai", ai_time_limits),
        JobKind("ai.image", "ai", ai_time_limits),
        JobKind("cache.warm", "maintenance", _fixed(240, 300)),
    )
}

KIND_QUEUES: dict[str, str] = {name: kind.queue for name, kind in KINDS.items()}
# Completion webhooks (workers/tasks/webhooks.py) are not jobs: no job row, no
# kind. Their own queue keeps a slow receiver from delaying anyone's jobs.
WEBHOOK_QUEUE = "webhooks"
QUEUES: tuple[str, ...] = ("ledger", "ai", "maintenance", WEBHOOK_QUEUE)


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's task_routes: each kind to its queue, housekeeping to maintenance, webhooks apart."""
    routes = {name: {"queue": kind.queue} for name, kind in KINDS.items()}
    for pattern in ("cache.*", "maintenance.*", "system.*"):
        routes[pattern] = {"queue": "maintenance"}
    routes["webhooks.*"] = {"queue": WEBHOOK_QUEUE}
    return routes


def hard_time_limits(ai_timeout_seconds: float) -> dict[str, float]:
    """Each kind's hard time limit (for the stuck-job sweep)."""
    return {name: kind.limits(ai_timeout_seconds)[1] for name, kind in KINDS.items()}


def rerunnable_kinds() -> tuple[str, ...]:
    """Kinds whose stuck runs are published again rather than failed."""
    return tuple(name for name, kind in KINDS.items() if kind.rerun_when_stuck)

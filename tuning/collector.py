"""CPython's cyclic collector for a long-running server: start-up objects frozen, fewer collections.

Changes: once a process has loaded what it keeps for life, `gc.freeze()` moves
those objects out of the collector's sight and the youngest generation is
collected every YOUNG_THRESHOLD allocations instead of 700.

Why: a request's objects that outlive it (a kept-alive connection's parser, a
waiting greenlet's frames) are promoted, so full collections came every few
seconds, each walking every object in the process: with 10,000 waiting
clients a web worker spent about a tenth of its CPU there, in pauses of
120-220 ms (docs/benchmarks.md, "collector"). Garbage in cycles is still
collected, only later: memory grows by at most what YOUNG_THRESHOLD objects
hold between collections. A prefork parent collects and freezes before it
forks (`worker_init`); after a fork, children and the parent only freeze, since
a collection writes to every object and copies every page a child shares
with its parent (30 MiB more unshared memory per child, measured).

Written against: CPython 3.11-3.13's `gc` (no third-party target).
Breaks: tests/tuning/test_collector.py.
Off: `CONVEYOR_TUNING=-collector` (or `off`).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# Collections of one generation before the next older one is collected too.
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 10


def tune_collector(*, collect: bool = True) -> None:
    """Freeze what the process holds now and collect the young generation less often.

    `collect`: first collect the garbage start-up left (so it is not frozen
    with the rest); False where that would copy pages shared with a parent.
    """
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def _before_pool(**_kwargs: object) -> None:
    # The worker's own process, before a prefork pool forks its children:
    # the one moment a full collection copies nothing.
    tune_collector()


def _after_fork(**_kwargs: object) -> None:
    # A prefork child: the parent collected and froze before forking it.
    tune_collector(collect=False)


def _ready(**_kwargs: object) -> None:
    # The worker's own process, its pool started (the consumer and, under -P
    # gevent, every task); prefork children share its pages: no collection.
    tune_collector(collect=False)


def install_worker_signals() -> None:
    """Tune the collector in every Celery worker process at the right moment (idempotent)."""
    from celery.signals import worker_init, worker_process_init, worker_ready

    worker_init.connect(_before_pool, weak=False, dispatch_uid="conveyor.collector.init")
    worker_process_init.connect(_after_fork, weak=False, dispatch_uid="conveyor.collector.fork")
    worker_ready.connect(_ready, weak=False, dispatch_uid="conveyor.collector.ready")

"""The worker's side of fair share: free a finished job's slot, release the next, advertise slots.

Every run of a fair-queue task that ends (success, failure, a cancelled or
already finished job skipped, superseded; not a Retry, whose job runs again)
frees the job's slot in the fair lines and publishes what the gate releases
in its place (shared/jobs/fair.py), from Celery's `task_postrun` and
`task_revoked` signals; the ledger batch and the poison quarantine, which
end jobs outside a task run, call `finished` themselves. Freeing is
idempotent: a duplicate delivery frees nothing twice. A worker consuming a
fair queue advertises its execution slots (its concurrency, times the
batch a slot runs where its consumer batches, plus FAIR_SLOT_MARGIN) every
few seconds, which is the gate's window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, Task
from celery.signals import task_postrun, task_revoked, worker_ready, worker_shutdown

from shared.jobs.fair import FAIR_QUEUES, SLOTS_TTL_SECONDS
from shared.jobs.kinds import KIND_QUEUES
from workers.runtime import publisher, resources

log = logging.getLogger(__name__)

REFRESH_SECONDS = SLOTS_TTL_SECONDS / 3
_advertisers: dict[str, threading.Event] = {}


def finished(app: Celery, queue: str, job_ids: Iterable[str]) -> None:
    """Free the slots of `job_ids` (ended on `queue`) and publish the jobs released instead."""
    ids = list(job_ids)
    if queue not in FAIR_QUEUES or not ids:
        return
    try:
        jobs_publisher = publisher(app)
        jobs_publisher.publish_released(jobs_publisher.lines.finish(queue, ids))
    except Exception:
        # The sweep reconciles: a finished job's slot is freed from its row.
        log.warning("fair slots of %d job(s) not freed now", len(ids), exc_info=True)


def _fair_queue(task: Any) -> str | None:
    queue = KIND_QUEUES.get(getattr(task, "name", ""))
    return queue if queue in FAIR_QUEUES else None


def _after_run(sender: Task | None = None, task_id: str = "", state: str = "", **_kw: Any) -> None:
    queue = _fair_queue(sender)
    if queue is not None and task_id and state != "RETRY":
        finished(sender.app, queue, [task_id])


def _revoked(sender: Any = None, request: Any = None, **_kw: Any) -> None:
    task = getattr(request, "task", None) or sender
    queue = _fair_queue(task)
    if queue is not None and request is not None:
        finished(task.app, queue, [request.id])


def _consumed_fair_queues(consumer: Any) -> list[str]:
    names = {queue.name for queue in consumer.task_consumer.queues}
    return [queue for queue in FAIR_QUEUES if queue in names]


def _jobs_per_slot(consumer: Any, queue: str) -> int:
    """How many of `queue`'s jobs one execution slot of this worker runs at once.

    One, except where the consumer batches a kind's messages (the ledger
    batches of tuning/celery_ledger_batches.py): a slot then runs a batch, and
    a window of one job per slot would starve the batches (and the drain).
    """
    handlers = [consumer.strategies.get(kind) for kind, q in KIND_QUEUES.items() if q == queue]
    return max([getattr(handler, "jobs_per_call", 1) for handler in handlers] or [1])


def _ready(sender: Any = None, **_kw: Any) -> None:
    consumer = sender
    queues = _consumed_fair_queues(consumer)
    if not queues:
        return
    app = consumer.app
    margin = app.conf.conveyor_settings.fair_slot_margin
    concurrency = consumer.controller.concurrency
    slots = {queue: concurrency * _jobs_per_slot(consumer, queue) + margin for queue in queues}
    stop = _advertisers.setdefault(consumer.hostname, threading.Event())
    stop.clear()

    def advertise() -> None:
        while True:
            try:
                lines = resources(app).fair
                now_ms = int(time.time() * 1000)
                for queue in queues:
                    lines.advertise(queue, consumer.hostname, slots[queue], now_ms=now_ms)
                    jobs_publisher = publisher(app)
                    # More capacity than before (a worker joined): fill it.
                    jobs_publisher.publish_released(lines.release(queue))
            except Exception:
                log.warning("fair slots not advertised", exc_info=True)
            if stop.wait(REFRESH_SECONDS):
                return

    threading.Thread(target=advertise, name="conveyor-fair-slots", daemon=True).start()


def _shutdown(sender: Any = None, **_kw: Any) -> None:
    hostname = getattr(sender, "hostname", None)
    stop = _advertisers.pop(hostname, None) if hostname else None
    if stop is None:
        return
    stop.set()
    try:
        for queue in FAIR_QUEUES:
            resources(sender.app).fair.withdraw(queue, hostname)
    except Exception:
        log.warning("fair slots of %s not withdrawn (they expire)", hostname, exc_info=True)


def install() -> None:
    """Connect the signal handlers (idempotent)."""
    task_postrun.connect(_after_run, weak=False, dispatch_uid="conveyor.fair.postrun")
    task_revoked.connect(_revoked, weak=False, dispatch_uid="conveyor.fair.revoked")
    worker_ready.connect(_ready, weak=False, dispatch_uid="conveyor.fair.ready")
    worker_shutdown.connect(_shutdown, weak=False, dispatch_uid="conveyor.fair.shutdown")

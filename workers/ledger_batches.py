"""Ledger postings in batches: many `ledger.transaction` messages, one database call.

Run one message at a time, a one-entry posting costs Celery's whole
per-message path (a Request object, the trip to a pool process and back, the
tracer and its signals) plus a database round trip and commit and a Redis
round trip, for a few hundred microseconds of real work. For this task only,
the worker's consumer (the main process) takes messages through the strategy
below instead of Celery's default one:

- A plain message (no ETA, not a retry) is held in a buffer. While the pool
  has a free slot the buffer goes out at once as a batch, so an idle worker
  runs a lone job without waiting: no timer, no added latency. While every
  slot is busy, messages gather (up to MAX_BATCH per batch), and when a batch
  returns the buffer goes out as the next: batches grow with the backlog.
- In a pool process, one call of `shared.job_posting.post_jobs` posts the
  whole batch in one transaction, each job with its own outcome, and one
  pipelined Redis trip announces every outcome (each owner's cached reads
  dropped first, so a read after SUCCESS is fresh).
- Acks stay late, as for every job task: a message is acked after its job
  committed (or was found already finished or cancelled). A worker that dies
  mid-batch leaves every message of it unacked, to be delivered again; the
  job rows make the second delivery a no-op for what had committed.
- Whatever a batch does not finish goes through Celery's own path for that
  message, as if it had never been batched: a debit that would overdraw (the
  task fails the job with `insufficient_funds`), a malformed id, a message
  with an ETA or a retry count, and the whole batch if its call failed (the
  database is down: each message then retries with backoff on its own).
- Held messages count against the worker's prefetch; while ledger messages
  are held the prefetch is raised by as many (at most MAX_HELD), so the
  consumer keeps reading ledger messages while the pool is busy, and other
  queues keep their one-message-per-process reservation.

Batches are visible to operators: `conveyor_ledger_batch_size` on the
worker's metrics port, the usual per-task metrics per job, and, when Flower
has turned task events on, each job's received/started/succeeded events.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, Task, current_app
from celery.worker.strategy import default as default_strategy
from sqlalchemy.engine import make_url

from shared import job_posting, jobs
from shared.jobs.lifecycle import queue_outcome, queue_webhooks
from shared.wallet_cache import user_scope
from workers.kombu_patches import ack_many
from workers.runtime import resources

log = logging.getLogger(__name__)
# Where Celery's path writes "task started" / "task finished" (workers/observability.py).
task_log = logging.getLogger("conveyor.tasks")

# Jobs per database call: large enough to amortise the call, small enough
# that one batch holds its wallet rows briefly.
MAX_BATCH = 64
# Ledger messages one worker holds beyond its prefetch while they wait.
MAX_HELD = 2 * MAX_BATCH


@dataclass
class Held:
    """A buffered message and what Celery's own path needs to take it over."""

    message: Any
    body: Any
    ack: Any
    reject: Any
    callbacks: Any
    task_id: str
    job_id: str
    headers: dict[str, Any]


@dataclass(frozen=True)
class Item:
    """What a pool process needs of one message (plain data: it crosses to the child)."""

    task_id: str
    job_id: str
    sent_at: float | None


def strategy(task: Task, app: Celery, consumer: Any, **options: Any) -> Callable[..., Any]:
    """The consumer's message handler for `task`: batched where the database allows it."""
    default = default_strategy(task, app, consumer, **options)
    database_url = app.conf.conveyor_settings.resolved_database_url  # SQLite when unset
    if make_url(database_url).get_backend_name() != "postgresql":
        return default  # the one-call posting is PostgreSQL's (job_posting.py)
    # A message handed back was logged as received when it was buffered.
    quiet = default_strategy(task, app, consumer, **{**options, "info": _not_logged})
    return Batcher(task, consumer, default, quiet).on_message


def _not_logged(*_args: Any, **_kwargs: Any) -> None:
    return None


class Batcher:
    """The consumer-side buffer of one worker (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        consumer: Any,
        default: Callable[..., Any],
        hand_back: Callable[..., Any],
    ) -> None:
        self.task = task
        self.consumer = consumer
        self.default = default
        self.hand_back = hand_back
        self.pool = consumer.pool
        self.slots = max(1, int(getattr(self.pool, "num_processes", 0) or self.pool.limit or 1))
        self.buffer: list[Held] = []
        self.in_flight = 0
        self.held = 0
        self.qos: Any = None
        # Batches return on the pool's callback thread (threads pool) or the
        # consumer's event loop (prefork): state changes take the lock.
        self.lock = threading.Lock()
        from celery.concurrency import prefork

        # A prefork child gets the task by name; other pools share the process.
        if isinstance(self.pool, prefork.TaskPool):
            self.target: Callable[..., list[int]] = run_batch_by_name
            self.target_args: tuple[Any, ...] = (task.name,)
        else:
            self.target, self.target_args = functools.partial(run_batch, task), ()
        # Flower may turn events on (and off) while the worker runs.
        self.eventer = consumer.event_dispatcher

    def on_message(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any):
        headers = message.headers or {}
        job_id = _plain_job_id(message, headers)
        if job_id is None:
            return self.default(message, body, ack, reject, callbacks, **kw)
        held = Held(message, body, ack, reject, callbacks, headers.get("id", ""), job_id, headers)
        if log.isEnabledFor(logging.INFO):
            # Celery's own line for a received task, so log searches (and
            # anyone counting deliveries) see a batched job like any other.
            log.info(
                "Task %s[%s] received", self.task.name, held.task_id, extra=self._log_fields(held)
            )
        with self.lock:
            self.buffer.append(held)
            self.held += 1
            self._adjust_prefetch()
        self._event("task-received", held, name=self.task.name, args=repr([job_id]), kwargs="{}")
        self._dispatch()
        return None

    def _dispatch(self) -> None:
        while True:
            with self.lock:
                if not self.buffer or self.in_flight >= self.slots:
                    return
                batch, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
                self.in_flight += 1
            started = time.monotonic()
            logs = task_log.isEnabledFor(logging.INFO)
            now = time.time()
            for held in batch:
                self._event("task-started", held)
                if logs:
                    # The lines Celery's path writes per task (workers/observability.py).
                    sent_at = _float(held.headers.get("sent_at"))
                    wait_ms = None if sent_at is None else round(max(0.0, now - sent_at) * 1000)
                    task_log.info(
                        "task started",
                        extra={**self._log_fields(held), "queue_wait_ms": wait_ms,
                               "batch_size": len(batch)},
                    )  # fmt: skip
            items = [Item(h.task_id, h.job_id, _float(h.headers.get("sent_at"))) for h in batch]
            self.pool.apply_async(
                self.target,
                args=(*self.target_args, items),
                callback=functools.partial(self._returned, batch, started),
                error_callback=functools.partial(self._lost, batch),
                soft_timeout=self.task.soft_time_limit,
                timeout=self.task.time_limit,
            )

    def _returned(self, batch: list[Held], started: float, handed_back: list[int]) -> None:
        back = set(handed_back)
        runtime = time.monotonic() - started
        done = [held for index, held in enumerate(batch) if index not in back]
        self._ack(done)
        for held in done:
            self._event("task-succeeded", held, result="None", runtime=runtime)
        if log.isEnabledFor(logging.INFO):
            for index, held in enumerate(batch):
                self._log_finished(held, len(batch), runtime, handed_back=index in back)
        self._release(batch, [batch[i] for i in sorted(back)])

    def _ack(self, done: list[Held]) -> None:
        errors = self.consumer.connection_errors
        if getattr(self.consumer, "_maximum_prefetch_restored", True):
            ack_many([held.message for held in done], log, errors)
            return
        # Celery is restoring its prefetch after a reconnect and counts acks
        # through its own callbacks: ack each message through them.
        for held in done:
            held.ack(log, errors)

    def _lost(self, batch: list[Held], exc: BaseException) -> None:
        # The pool process died or hit the hard time limit: nothing is known
        # of what committed, so every job takes Celery's own path (a finished
        # one is skipped there).
        log.warning("ledger batch of %d lost (%r); each job runs on its own", len(batch), exc)
        if log.isEnabledFor(logging.INFO):
            for held in batch:
                self._log_finished(held, len(batch), None, handed_back=True)
        self._release(batch, batch)

    def _release(self, batch: list[Held], handed_back: list[Held]) -> None:
        with self.lock:
            self.in_flight -= 1
            self.held -= len(batch)
            self._adjust_prefetch()
        for held in handed_back:
            self.hand_back(held.message, held.body, held.ack, held.reject, held.callbacks)
        self._dispatch()

    def _adjust_prefetch(self) -> None:
        # Called with the lock held. The prefetch is set, not nudged, to the
        # worker's own (processes x multiplier) plus the held messages, so it
        # can never drift; the consumer applies it on its next loop turn.
        # While Celery is still restoring its prefetch after a reconnect (it
        # sets the value itself then), it is left alone.
        if self.qos is None:
            # The consumer's QoS of this connection; after a reconnect the
            # strategy, and so this batcher, is built anew for the new one.
            self.qos = self.consumer.qos
        consumer = self.consumer
        base = consumer.max_prefetch_count
        if not base or not getattr(consumer, "_maximum_prefetch_restored", True):
            return
        with self.qos._mutex:
            self.qos.value = base + min(self.held, MAX_HELD)

    def _log_fields(self, held: Held) -> dict[str, Any]:
        """The per-task log context Celery's path binds (workers/observability.request_context)."""
        return {
            "task_id": held.task_id,
            "request_id": held.headers.get("request_id"),
            "job_kind": self.task.name,
            "user_id": held.headers.get("user_id"),
        }

    def _log_finished(
        self, held: Held, size: int, runtime: float | None, *, handed_back: bool
    ) -> None:
        fields = {**self._log_fields(held), "batch_size": size}
        duration = None if runtime is None else round(runtime * 1000, 2)
        if handed_back:
            # Celery's own path runs it next and logs its own lines.
            task_log.info("task finished", extra={**fields, "state": "HANDED_BACK"})
            return
        task_log.info(
            "task finished", extra={**fields, "state": "SUCCESS", "duration_ms": duration}
        )
        log.info(
            "Task %s[%s] succeeded in %.6fs: None",
            self.task.name,
            held.task_id,
            runtime,
            extra=fields,
        )

    def _event(self, kind: str, held: Held, **fields: Any) -> None:
        if self.eventer is not None and self.eventer.enabled:
            self.eventer.send(kind, uuid=held.task_id, **fields)


def _plain_job_id(message: Any, headers: dict[str, Any]) -> str | None:
    """The job id of a first-delivery, no-ETA message in Celery's protocol 2; else None."""
    if headers.get("eta") or headers.get("retries") or headers.get("countdown"):
        return None
    try:
        args, _kwargs, _embed = message.decode()
    except Exception:  # anything odd is Celery's own path to handle or refuse
        return None
    if len(args) != 1 or not isinstance(args[0], str):
        return None
    return args[0]


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def run_batch_by_name(task_name: str, items: list[Item]) -> list[int]:
    """`run_batch` in a prefork child, where the worker's app is the current one."""
    return run_batch(current_app.tasks[task_name], items)


def run_batch(task: Task, items: list[Item]) -> list[int]:
    """Post `items` in one call and announce them; the indexes to hand back to Celery.

    Never raises: a failure hands the whole batch back, untouched.
    """
    started = time.perf_counter()
    parsed = [jobs.parse_job_id(item.job_id) for item in items]
    valid = [job_id for job_id in parsed if job_id is not None]
    try:
        outcomes = _post(task, valid) if valid else {}
    except Exception:
        log.warning(
            "ledger batch of %d not posted; each job runs on its own", len(items), exc_info=True
        )
        return list(range(len(items)))
    handed_back = [
        i
        for i, job_id in enumerate(parsed)
        if job_id is None or outcomes[job_id].refused  # Celery's path logs or fails these
    ]
    _record(task, items, handed_back, time.perf_counter() - started)
    return handed_back


def _post(task: Task, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, job_posting.PostOutcome]:
    res = resources(task.app)
    with res.autocommit_engine.connect() as conn:
        outcomes = job_posting.post_jobs(conn, job_ids, now=jobs.utcnow())
    posted = [o for o in outcomes.values() if o.status is not None]
    if not posted:
        return outcomes
    # Committed. One Redis trip: the owners' cached reads dropped, then each
    # job's SUCCESS document, notification and events.
    try:
        pipe = res.statuses.pipeline()
        for owner_id in {o.owner_id for o in posted}:
            res.cache.invalidate(user_scope(owner_id), pipe=pipe)
        for o in posted:
            queue_outcome(pipe, res.statuses, res.notifications, o.owner_id, o.status, o.summary)
        pipe.execute()
    except redis.RedisError:
        log.warning("outcomes of %d ledger jobs not published: Redis unavailable", len(posted))
    with_webhooks = [o for o in posted if o.has_webhooks]
    if with_webhooks:
        from workers.tasks.webhooks import outbox

        webhooks = outbox(task.app)
        for o in with_webhooks:
            queue_webhooks(webhooks, o.owner_id, o.status)
    return outcomes


def _record(task: Task, items: list[Item], handed_back: list[int], seconds: float) -> None:
    """Per-job task metrics for the jobs this batch finished, and the batch's size."""
    from workers.observability import batch_metrics, task_metrics

    done = len(items) - len(handed_back)
    batch_metrics()["size"].observe(len(items))
    if not done:
        return
    metrics = task_metrics()
    metrics["started"].labels(task.name).inc(done)
    metrics["succeeded"].labels(task.name).inc(done)
    runtime = metrics["runtime"].labels(task.name)
    queue_wait = metrics["queue_wait"].labels(task.name)
    started_at = time.time() - seconds
    back = set(handed_back)
    for index, item in enumerate(items):
        if index in back:
            continue
        runtime.observe(seconds)
        if item.sent_at is not None:
            queue_wait.observe(max(0.0, started_at - item.sent_at))

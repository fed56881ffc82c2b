"""Ledger postings in batches: the worker's consumer gathers `ledger.transaction` messages.

Changes: `ledger.transaction`'s Celery `Strategy` (the consumer's handler
for its messages, named by the task class in workers/tasks/ledger.py) holds
plain messages in a buffer and sends them to the pool as one call instead of
one Request each; it raises the consumer QoS's prefetch while messages are
held (taking kombu's private `QoS._mutex`), and acks a batch in one round
trip (tuning/kombu_redis.py `ack_many`).

Why: run one message at a time, a one-entry posting costs Celery's whole
per-message path (a Request, the trip to a pool process and back, the tracer
and its signals) plus a database and a Redis round trip, for a few hundred
microseconds of real work (docs/benchmarks.md, "prefork drain").

How it behaves:
- While the pool has a free slot the buffer goes out at once, so an idle
  worker runs a lone job without waiting (no timer, no added latency); while
  every slot is busy messages gather (up to MAX_BATCH), and when a batch
  returns the buffer goes out as the next: batches grow with the backlog.
- In a pool process one call posts the whole batch (workers/ledger_batches.py).
- Acks stay late: a message is acked after its job committed (or was found
  finished or cancelled); a worker that dies mid-batch leaves every message
  of it unacked, and the job rows make a second delivery a no-op.
- What a batch does not finish goes through Celery's own path, as if never
  batched: an overdraft (failed as `insufficient_funds` there), a malformed
  id, a message with an ETA or retries, and the whole batch if its call failed.
- Held messages count against the prefetch; while held it is raised by as
  many (at most MAX_HELD), so the consumer keeps reading ledger messages.
Operators see batches as `conveyor_ledger_batch_size`, the usual per-task
metrics and log lines per job, and Flower's task events when it turned them on.

Written against: celery 5.7.0 (`celery.worker.strategy.default`, the
consumer's `pool`, `qos`, `max_prefetch_count`, `_maximum_prefetch_restored`,
`event_dispatcher`), kombu 5.7.0 (`QoS._mutex`, `Message.decode`).
Breaks: tests/integration/test_ledger_batches.py.
Off: `CONVEYOR_TUNING=-ledger_batches` (or `off`): every message takes Celery's path.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.worker.strategy import default as default_strategy
from sqlalchemy.engine import make_url

from tuning import registry as tuning
from tuning.kombu_redis import ack_many

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
    # The message's W3C traceparent: each job's run is a span of its own trace.
    traceparent: str | None = None


def strategy(task: Task, app: Celery, consumer: Any, **options: Any) -> Callable[..., Any]:
    """The consumer's message handler for `task`: batched where the database allows it."""
    default = default_strategy(task, app, consumer, **options)
    settings = app.conf.conveyor_settings
    if not tuning.enabled(settings, "ledger_batches"):
        return default
    if make_url(settings.resolved_database_url).get_backend_name() != "postgresql":
        return default  # the one-call posting is PostgreSQL's (shared/ledger/job_posting.py)
    tuning.applied("ledger_batches")
    # A message handed back was logged as received when it was buffered.
    quiet = default_strategy(task, app, consumer, **{**options, "info": _not_logged})
    return Batcher(task, consumer, default, quiet)


def _not_logged(*_args: Any, **_kwargs: Any) -> None:
    return None


class Batcher:
    """The consumer-side buffer of one worker (see the module docstring); the message handler."""

    # Read by the fair gate (workers/fair_gate.py): one pool slot runs this many jobs at once.
    jobs_per_call = MAX_BATCH

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

        # The task class names the pool side (workers/ledger_batches.py): a
        # prefork child gets the task by name; other pools share the process.
        if isinstance(self.pool, prefork.TaskPool):
            self.target: Callable[..., list[int]] = task.run_batch_by_name
            self.target_args: tuple[Any, ...] = (task.name,)
        else:
            self.target, self.target_args = functools.partial(task.run_batch, task), ()
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

    __call__ = on_message

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
            items = [
                Item(h.task_id, h.job_id, _float(h.headers.get("sent_at")),
                     h.headers.get("traceparent"))
                for h in batch
            ]  # fmt: skip
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

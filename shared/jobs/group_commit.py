"""Group commit: concurrent callers in one process share one flush (leader/follower).

A caller hands its item to `GroupCommit.run` and waits for its own outcome. A
caller that finds no flush in progress leads at once: it takes what is queued
(its own item first, at most `max_batch`) and flushes it, so an idle process
adds no latency. Given `gather`, a leader first lets the callers that are
ready to run join its batch (under gevent, one pass of the hub: the requests
already read from their sockets), instead of leaving them a whole flush
behind. Callers arriving meanwhile queue up; when the flush ends, the first
of them leads the next one. Each item gets its own result or exception.

Written on `threading` primitives: under gunicorn's gevent worker they are
monkey-patched and the waiters are greenlets; under gthread they are threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[T]):
    __slots__ = ("done", "error", "item", "lead", "outcome", "woken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.woken = threading.Event()
        self.done = False
        self.lead = False
        self.outcome: object = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Runs `flush(items) -> outcomes` (one per item, in order) for concurrent callers' batches.

    An outcome is returned to its caller as is (it may be an exception object
    the caller turns into an answer); an exception the flush raises is raised
    in every caller of that batch.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 64,
        gather: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._gather = gather
        self._lock = threading.Lock()
        self._queue: deque[_Waiter[T]] = deque()
        self._flushing = False
        # What the flushes have seen: for tests and the logs, never for decisions.
        self.flushes = 0
        self.largest_batch = 0

    def run(self, item: T) -> R:
        """`item`'s outcome from the flush that took it; raises what that flush raised."""
        waiter = _Waiter(item)
        with self._lock:
            self._queue.append(waiter)
            lead = not self._flushing
            if lead:
                self._flushing = True
        if not lead:
            try:
                waiter.woken.wait()
            except BaseException:
                self._abandon(waiter)
                raise
            if not waiter.done:
                # Handed the lead: our item is at the head of the queue.
                self._lead()
        else:
            self._lead()
        if waiter.error is not None:
            raise waiter.error
        return waiter.outcome  # type: ignore[return-value]

    def _abandon(self, waiter: _Waiter[T]) -> None:
        """A waiter interrupted (its greenlet killed): drop its item, or pass on the lead."""
        with self._lock:
            if not waiter.lead and waiter in self._queue:
                self._queue.remove(waiter)
                return
        if waiter.lead and not waiter.done:
            # Nobody else will lead the queued callers if we do not.
            self._lead()

    def _lead(self) -> None:
        if self._gather is not None:
            self._gather()  # callers ready to run queue up behind us meanwhile
        with self._lock:
            count = min(self._max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
        self.flushes += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        successor = None
        interrupted: BaseException | None = None
        outcomes: Sequence[object] = ()
        error: BaseException | None = None
        try:
            outcomes = self._flush([waiter.item for waiter in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)}")
        except Exception as exc:  # every caller of the batch raises what went wrong
            error = exc
        except BaseException as exc:  # the leader is being killed: the others just fail
            interrupted = exc
            error = RuntimeError("the batch's flush was interrupted")
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                else:
                    self._flushing = False
        for index, waiter in enumerate(batch):
            if error is None:
                waiter.outcome = outcomes[index]
            else:
                waiter.error = error
            waiter.done = True
            waiter.woken.set()
        if successor is not None:
            successor.woken.set()
        if interrupted is not None:
            raise interrupted

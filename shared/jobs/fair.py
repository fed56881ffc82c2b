"""Fair share: per-user lines in Redis, released to the broker by a gate, users served in turn.

A job of a fair queue (`FAIR_QUEUES`) is not published when accepted: it
joins its user's line in the status Redis, and the gate releases jobs onto
the broker (with the ordinary publisher, so Celery's own consumer takes
them) only while the queue's released-and-unfinished jobs are fewer than the
workers' capacity (the window). Each release goes to the user next in the
stride order (weighted fair queueing; FIFO within one user), and never
beyond a user's running cap. Accepting and releasing are one script call
(shared/jobs/fair_scripts.py); a finished job frees its slot and releases
the next, in one more. docs/fairness.md has the design and its failure cases.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from infra.broker.depth import BrokerUnavailable, QueueDepths
from infra.broker.messages import BrokerError, JobMessage, PipelineExtra, Publisher
from infra.settings import Settings
from shared.jobs import fair_scripts

__all__ = [
    "FAIR_QUEUES",
    "FairInFlight",
    "FairLines",
    "FairPublisher",
    "FairQueueDepths",
    "Policy",
    "Position",
    "reconcile",
]

log = logging.getLogger(__name__)

# The job queues served in turn; maintenance and webhooks stay plain FIFO.
FAIR_QUEUES: tuple[str, ...] = ("ai", "ledger")
# How long a worker's advertised slots count without being refreshed.
SLOTS_TTL_SECONDS = 15


@dataclass(frozen=True)
class Policy:
    """One user's share of one queue: a weight and a running cap (None: the queue's default)."""

    weight: int = 1
    max_running: int | None = None

    def encoded(self) -> str:
        return f"{self.weight}|{'' if self.max_running is None else self.max_running}"

    @classmethod
    def decoded(cls, text: str) -> Policy:
        weight, _, cap = text.partition("|")
        return cls(int(weight or 1), int(cap) if cap else None)


@dataclass(frozen=True)
class Position:
    """Where a waiting job stands in the fair order, and why it waits."""

    ahead: int
    # "own_jobs" (behind its user's earlier jobs), "user_cap" (its user is at
    # the running cap) or "worker" (next, waiting for a free worker slot).
    reason: str


class FairLines:
    """The fair lines of every fair queue, on the status Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._prefix = settings.redis_key_prefix
        self._caps = {
            "ai": settings.ai_user_concurrency,
            "ledger": settings.ledger_user_concurrency,
        }
        self._windows = {"ai": settings.fair_window_ai, "ledger": settings.fair_window_ledger}
        self._idle_window = settings.fair_idle_window
        self._enqueue = client.register_script(fair_scripts.ENQUEUE_AND_RELEASE)
        self._finish = client.register_script(fair_scripts.FINISH_AND_RELEASE)
        self._remove = client.register_script(fair_scripts.REMOVE)
        self._position = client.register_script(fair_scripts.POSITION)

    def key(self, queue: str, name: str) -> str:
        return f"{self._prefix}fair:{queue}:{name}"

    def _args(self, queue: str) -> list[Any]:
        return [
            self.key(queue, ""),
            self._caps.get(queue, 0),
            self._windows.get(queue, 0),
            self._idle_window,
        ]

    def _run(self, script: Script, queue: str, extra: Sequence[Any]) -> Any:
        return script(keys=[self.key(queue, "released")], args=[*self._args(queue), *extra])

    def submit(self, queue: str, jobs: Sequence[JobMessage]) -> list[JobMessage]:
        """Put `jobs` in their users' lines and release what the window allows; one call.

        Returns the messages to publish now: the jobs released (any user's),
        and any of `jobs` already released before (a sweep's re-publish). A
        job already waiting in its line is not added twice.
        """
        args: list[Any] = []
        for job in jobs:
            args += [_owner(job), job.job_id, _encode(job)]
        released, already = self._run(self._enqueue, queue, args)
        again = {_text(job_id) for job_id in already}
        return _messages(queue, released) + [job for job in jobs if job.job_id in again]

    def finish(self, queue: str, job_ids: Iterable[str]) -> list[JobMessage]:
        """Free the slots of finished jobs (idempotent) and release the next; the messages."""
        return _messages(queue, self._run(self._finish, queue, list(job_ids)))

    def withdraw_jobs(self, queue: str, jobs: Sequence[JobMessage]) -> None:
        """Take jobs whose submission failed out of the lines (or free their slots); idempotent."""
        left = [job.job_id for job in jobs if not self.remove(queue, int(_owner(job)), job.job_id)]
        if left:
            self._finish(
                keys=[self.key(queue, "released")],
                args=[self.key(queue, ""), self._caps.get(queue, 0), -1, self._idle_window, *left],
            )

    def release(self, queue: str) -> list[JobMessage]:
        """Release what the window allows now (the sweep's nudge); the messages to publish."""
        return self.finish(queue, [])

    def remove(self, queue: str, owner_id: int, job_id: str) -> bool:
        """Take a waiting job out of its user's line (a cancel); whether it was waiting."""
        return bool(self._run(self._remove, queue, [owner_id, job_id]))

    def position(self, queue: str, owner_id: int, job_id: str) -> Position | None:
        """The job's place in the fair order (O(users)); None when it waits in no line."""
        ahead, reason = self._run(self._position, queue, [owner_id, job_id])
        if int(ahead) < 0:
            return None
        return Position(int(ahead), _text(reason))

    def waiting(self, queue: str) -> int:
        """Jobs in the queue's lines (accepted, not yet released to the broker)."""
        return max(0, int(self._redis.get(self.key(queue, "waiting")) or 0))

    def users_waiting(self, queue: str) -> int:
        """Users with jobs in the queue's lines (served in turn, or at their cap)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self.key(queue, "active"))
        pipe.hlen(self.key(queue, "capped"))
        active, capped = pipe.execute()
        return int(active) + int(capped)

    def in_lines(self, candidates: Sequence[tuple[str, str]]) -> set[str]:
        """Which of (job id, queue) `candidates` wait in a fair line; one pipelined trip."""
        fair = [(job_id, queue) for job_id, queue in candidates if queue in FAIR_QUEUES]
        if not fair:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, queue in fair:
            pipe.hexists(self.key(queue, "msg"), job_id)
        return {job_id for (job_id, _), found in zip(fair, pipe.execute(), strict=True) if found}

    def released(self, queue: str) -> list[str]:
        """Jobs released to the broker and not finished (for the sweep's reconciliation)."""
        return [_text(job_id) for job_id in self._redis.zrange(self.key(queue, "released"), 0, -1)]

    def running(self, queue: str, owner_id: int) -> int:
        """How many of the user's jobs are released and unfinished."""
        return int(self._redis.hget(self.key(queue, "running"), str(owner_id)) or 0)

    def set_policy(self, queue: str, owner_id: int, policy: Policy | None) -> None:
        """Cache a user's share (None: the defaults); PostgreSQL holds the durable copy."""
        if policy is None:
            self._redis.hdel(self.key(queue, "policy"), str(owner_id))
        else:
            self._redis.hset(self.key(queue, "policy"), str(owner_id), policy.encoded())

    def sync_policies(self, queue: str, policies: dict[int, Policy]) -> None:
        """Replace the queue's cached shares with `policies` (the table's rows)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self.key(queue, "policy"))
        if policies:
            pipe.hset(
                self.key(queue, "policy"),
                mapping={str(uid): policy.encoded() for uid, policy in policies.items()},
            )
        pipe.execute()

    def advertise(self, queue: str, worker: str, slots: int, *, now_ms: int) -> None:
        """A live worker's execution slots on `queue`, counted for SLOTS_TTL_SECONDS."""
        expires = now_ms + SLOTS_TTL_SECONDS * 1000
        self._redis.hset(self.key(queue, "slots"), worker, f"{slots}|{expires}")

    def withdraw(self, queue: str, worker: str) -> None:
        """A stopping worker's slots no longer count."""
        self._redis.hdel(self.key(queue, "slots"), worker)


class FairInFlight:
    """The broker's view of in-flight jobs (an InFlight), with the jobs waiting in fair lines.

    A job waiting its turn has no broker message yet; it is not lost, and the
    lost-job sweep must not re-publish it (nor count it against
    STUCK_MAX_REDISPATCHES).
    """

    def __init__(self, inner: Any, lines: FairLines) -> None:
        self.inner = inner
        self.lines = lines
        self.exact = inner.exact

    def present(self, candidates: Sequence[tuple[str, str]]) -> set[str]:
        return self.inner.present(candidates) | self.lines.in_lines(candidates)

    def close(self) -> None:
        self.inner.close()


def reconcile(
    publisher: FairPublisher, queue: str, terminal: Callable[[list[str]], set[str]]
) -> int:
    """Free the slots of released jobs whose rows say they ended, release; how many were freed.

    `terminal(job_ids)` answers which of them ended (or have no row): a slot
    whose finish was lost (a worker died after its commit, Redis was down
    then) is freed here by the sweep, and the next jobs are published.
    """
    lines = publisher.lines
    released = lines.released(queue)
    ended = terminal(released) if released else set()
    publisher.publish_released(lines.finish(queue, sorted(ended)))
    return len(ended)


class FairQueueDepths(QueueDepths):
    """The broker's queue depths plus the jobs waiting in each fair queue's lines.

    What QUEUE_MAX_DEPTH admission and `conveyor_queue_depth` count: every
    accepted job not yet taken by a worker, on the broker or in a line.
    """

    def __init__(self, inner: QueueDepths, lines: FairLines, **cache: Any) -> None:
        super().__init__(**cache)
        self.inner = inner
        self.lines = lines

    def read(self, queues: Iterable[str]) -> dict[str, int]:
        depths = self.inner.read(queues)
        try:
            for queue in depths:
                if queue in FAIR_QUEUES:
                    depths[queue] += self.lines.waiting(queue)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"fair lines unavailable: {exc.__class__.__name__}") from exc
        return depths

    def close(self) -> None:
        self.inner.close()


class FairPublisher:
    """A Publisher whose fair-queue messages go through the lines; the rest straight on.

    Wraps the process's ordinary publisher (`inner`), which publishes every
    released message: Celery's send_task or the fast LPUSH, as before.
    """

    def __init__(self, inner: Publisher, lines: FairLines) -> None:
        self.inner = inner
        self.lines = lines

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        errors, _ = self.publish_many([JobMessage(task, job_id, queue, headers)])
        if errors[0] is not None:
            raise errors[0]

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        errors: list[BrokerError | None] = [None] * len(messages)
        # (index of the message whose answer a publish error is, or None; message)
        direct: list[tuple[int | None, JobMessage]] = []
        by_queue: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            # A message that names no user (a tool's, a test's) has no line.
            if message.queue in FAIR_QUEUES and message.headers.get("user_id") is not None:
                by_queue.setdefault(message.queue, []).append(index)
            else:
                direct.append((index, message))
        for queue, indexes in by_queue.items():
            try:
                out = self.lines.submit(queue, [messages[i] for i in indexes])
            except redis.RedisError:
                # The status Redis is down: straight onto the broker, in
                # arrival order (available rather than fair until it is back).
                log.warning("fair lines unavailable: %d job(s) published directly", len(indexes))
                direct += [(i, messages[i]) for i in indexes]
                continue
            # Released now: this batch's jobs or others'. Accepted either way
            # (in `released`): a message lost now is re-published by the sweep.
            direct += [(None, m) for m in out]
        if not direct and extra is None:
            return errors, []
        sent, answers = self.inner.publish_many([m for _, m in direct], extra)
        down: BrokerError | None = None
        for (index, message), error in zip(direct, sent, strict=True):
            if error is None:
                continue
            down = down or error
            if index is not None:
                errors[index] = error
            else:
                log.warning("released job %s not published (the sweep will): %s", message, error)
        if down is not None:
            self._refuse(messages, by_queue, errors, down)
        return errors, answers

    def _refuse(
        self,
        messages: Sequence[JobMessage],
        by_queue: dict[str, list[int]],
        errors: list[BrokerError | None],
        down: BrokerError,
    ) -> None:
        """The broker refused: this batch's fair jobs are refused too, and leave the lines.

        So "accepted" still means the broker answered: the rows are deleted
        and the clients get 503, as without fair share.
        """
        for queue, indexes in by_queue.items():
            try:
                self.lines.withdraw_jobs(queue, [messages[i] for i in indexes])
            except redis.RedisError:
                log.warning("refused jobs not withdrawn from the %s lines", queue, exc_info=True)
            for i in indexes:
                errors[i] = errors[i] or down

    def publish_released(self, messages: Sequence[JobMessage]) -> None:
        """Publish messages the gate released; one lost now is re-published by the sweep."""
        if not messages:
            return
        errors, _ = self.inner.publish_many(messages)
        lost = [m.job_id for m, error in zip(messages, errors, strict=True) if error is not None]
        if lost:
            log.warning("%d released job(s) not published (the sweep will): %s", len(lost), lost)

    def shares_redis(self, url: str) -> bool:
        return self.inner.shares_redis(url)

    def close(self) -> None:
        self.inner.close()


def _owner(job: JobMessage) -> str:
    owner = job.headers.get("user_id")
    if owner is None:
        raise ValueError(f"job {job.job_id} of a fair queue names no user")
    return str(owner)


def _encode(job: JobMessage) -> str:
    return json.dumps([job.task, job.headers], separators=(",", ":"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _messages(queue: str, flat: Sequence[Any]) -> list[JobMessage]:
    out = []
    for i in range(0, len(flat), 2):
        if not flat[i + 1]:  # its message was lost with Redis: the sweep publishes it from the row
            continue
        task, headers = json.loads(_text(flat[i + 1]))
        out.append(JobMessage(task, _text(flat[i]), queue, headers))
    return out

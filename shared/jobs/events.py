"""The event log of jobs in Redis Streams, and the one reader per process that fans it out.

Every write of a live status document (shared/jobs/status.py, the only writer)
appends one event in the same Lua call: to the job's stream, to its owner's
stream and to one firehose stream, all under the same id. The per-job and
per-user streams are what a client replays (ordered, resumable by id, capped
and expiring); the firehose exists so that a process serving thousands of
streams reads Redis once (`EventHub`: one XREAD BLOCK) instead of once per
client. The job row stays the truth; this log is what streams replay.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

import redis

log = logging.getLogger(__name__)

# Caps (XADD MAXLEN ~, so Redis trims whole nodes, cheaply) and lifetime.
# A job appends a handful of events (ledger.random: about a dozen); 500 keeps
# every event of any job we run, and replaying a user's log stays small.
JOB_STREAM_MAX = 500
USER_STREAM_MAX = 500
# The firehose only carries events to live readers, which are at most a
# block interval behind: 10,000 events (a few MB) is minutes of headroom.
FIREHOSE_MAX = 10_000
EVENT_TYPES = ("state", "progress", "notification")

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class StreamKeys:
    """The Redis keys of the event log, under Conveyor's prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def user(self, user_id: int | str) -> str:
        return f"{self.prefix}user:{user_id}:events"

    @property
    def firehose(self) -> str:
        return f"{self.prefix}events"


class Event(NamedTuple):
    """One event as stored: its stream id, type, JSON data, job id and owner."""

    id: str
    type: str
    data: str
    job_id: str | None
    owner_id: str | None

    @property
    def order(self) -> tuple[int, int]:
        return event_order(self.id)


def is_event_id(value: str) -> bool:
    """Whether `value` looks like a stream id (`<ms>-<seq>`), as Last-Event-ID must."""
    return bool(_EVENT_ID.match(value))


def event_order(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (ids compare numerically, not as text)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(entry_id, fields.get("type", "state"), fields.get("data", "{}"),
                 fields.get("job"), fields.get("owner"))  # fmt: skip


class EventLog:
    """Replays of the per-job and per-user streams (XRANGE, after an id or from the start)."""

    def __init__(self, client: redis.Redis, keys: StreamKeys) -> None:
        self._redis = client
        self.keys = keys

    def job_events(self, job_id: str, after: str | None = None, count: int = 1000) -> list[Event]:
        """The job's retained events after `after` (exclusive), oldest first."""
        return self._range(self.keys.job(job_id), after, count)

    def user_events(self, user_id: int, after: str | None = None, count: int = 1000) -> list[Event]:
        """The user's retained events after `after` (exclusive), oldest first."""
        return self._range(self.keys.user(user_id), after, count)

    def _range(self, key: str, after: str | None, count: int) -> list[Event]:
        start = f"({after}" if after else "-"
        return [_event(entry_id, fields) for entry_id, fields in
                self._redis.xrange(key, min=start, max="+", count=count)]  # fmt: skip

    def wait_job_events(self, job_id: str, after: str | None, block_ms: int) -> list[Event]:
        """The job's events after `after`, waiting up to `block_ms` for one (XREAD BLOCK)."""
        return self._wait(self.keys.job(job_id), after, block_ms)

    def wait_user_events(self, user_id: int, after: str | None, block_ms: int) -> list[Event]:
        """The user's events after `after`, waiting up to `block_ms` for one (XREAD BLOCK)."""
        return self._wait(self.keys.user(user_id), after, block_ms)

    def _wait(self, key: str, after: str | None, block_ms: int, count: int = 1000) -> list[Event]:
        # From a concrete id, never `$`: an event written between the caller's
        # last read and this call is returned at once, not missed. BLOCK 0
        # would wait for ever.
        reply = self._redis.xread({key: after or "0-0"}, count=count, block=max(1, block_ms))
        return [_event(entry_id, fields) for _key, entries in reply or ()
                for entry_id, fields in entries]  # fmt: skip


# Put on every subscription after the reader lost Redis: the events written
# meanwhile did not reach the reader, so each stream re-reads its own log.
RESYNC = "resync"


class Subscription:
    """One client's inbox: events for its job (or its owner) and RESYNC markers."""

    __slots__ = ("inbox", "job_id", "owner_id")

    def __init__(self, job_id: str | None, owner_id: str | None) -> None:
        self.job_id = job_id
        self.owner_id = owner_id
        # SimpleQueue: no maxsize bookkeeping; under gevent it is cooperative.
        self.inbox: queue.SimpleQueue[Event | str] = queue.SimpleQueue()

    def get(self, timeout: float) -> Event | str | None:
        """The next event or RESYNC, or None when `timeout` passes with nothing."""
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    """One firehose reader per process, fanning events out to the subscriptions by job and owner.

    The reader is a thread (a greenlet under gevent's monkey-patching) started
    on the first subscription. It reads from a concrete last id, never `$`, so
    after a Redis restart it resumes where it stopped; every subscriber is then
    told to re-read its own log (RESYNC), which covers anything missed. Its
    first id is taken before the first subscription returns: a subscriber
    replays its log after subscribing, so every event is in that replay or
    after the reader's first id (taken later, the reader could skip an event
    written between the two).
    """

    def __init__(self, client: redis.Redis, keys: StreamKeys, *, block_ms: int = 2000) -> None:
        self._redis = client
        self._keys = keys
        self._block_ms = block_ms
        self._by_job: dict[str, set[Subscription]] = {}
        self._by_owner: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._start: str | None = None
        self._closed = False

    def subscribe(self, *, job_id: str | None = None, owner_id: int | None = None) -> Subscription:
        """Register an inbox for one job's events or for all of one owner's."""
        sub = Subscription(job_id, None if owner_id is None else str(owner_id))
        with self._lock:
            if sub.job_id is not None:
                self._by_job.setdefault(sub.job_id, set()).add(sub)
            if sub.owner_id is not None:
                self._by_owner.setdefault(sub.owner_id, set()).add(sub)
            if self._reader is None:
                # Under the lock: a second subscriber waits until the start is known.
                self._start = self._newest()
                self._reader = threading.Thread(target=self._run, name="event-hub", daemon=True)
                self._reader.start()
        return sub

    def _newest(self) -> str | None:
        """The firehose's newest id ("0-0" when empty); None when Redis does not answer."""
        try:
            newest = self._redis.xrevrange(self._keys.firehose, count=1)
        except redis.RedisError:
            return None  # the reader finds it, then every stream re-reads its log
        return newest[0][0] if newest else "0-0"

    def close(self) -> None:
        """Stop the reader after its current read (for tests and shutdown)."""
        self._closed = True

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            for index, key in ((self._by_job, sub.job_id), (self._by_owner, sub.owner_id)):
                members = index.get(key) if key is not None else None
                if members is not None:
                    members.discard(sub)
                    if not members:
                        del index[key]

    def _run(self) -> None:
        last = self._start
        lost = last is None  # started without Redis: resync once it answers
        backoff = 0.1
        while not self._closed:
            try:
                if last is None:
                    newest = self._redis.xrevrange(self._keys.firehose, count=1)
                    last = newest[0][0] if newest else "0-0"
                reply = self._redis.xread(
                    {self._keys.firehose: last}, count=1000, block=self._block_ms
                )
            except redis.RedisError as exc:
                if not lost:
                    log.warning("event reader lost Redis (%s); resuming from %s", exc, last)
                lost = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if lost:
                log.info("event reader reconnected; streams re-read their logs")
                self._broadcast(RESYNC)
                lost, backoff = False, 0.1
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._dispatch(_event(entry_id, fields))
                    last = entry_id

    def _dispatch(self, event: Event) -> None:
        with self._lock:
            targets = list(self._by_job.get(event.job_id or "", ()))
            targets.extend(self._by_owner.get(event.owner_id or "", ()))
        for sub in targets:
            sub.inbox.put(event)

    def _broadcast(self, marker: str) -> None:
        with self._lock:
            everyone = {s for group in self._by_job.values() for s in group}
            everyone.update(s for group in self._by_owner.values() for s in group)
        for sub in everyone:
            sub.inbox.put(marker)


def newer(events: Iterable[Event], after: str | None) -> list[Event]:
    """The events strictly after `after` (replay and live overlap; ids decide)."""
    if after is None:
        return list(events)
    floor = event_order(after)
    return [event for event in events if event.order > floor]

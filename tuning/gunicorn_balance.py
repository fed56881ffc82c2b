"""Kept-alive connections spread evenly over gunicorn's gevent workers.

Changes: gunicorn's gevent worker accepts through a subclass of gevent's
StreamServer (swapped into `gunicorn.workers.ggevent.StreamServer`); each
worker publishes how many connections it holds in a small table the arbiter
shares with its workers (anonymous shared memory made before the fork), and
a worker holding more than the fewest leaves a waiting connection to the
others for at most `GRACE_SECONDS`, so a busy or stuck peer never leaves one
waiting longer. The arbiter gives each new worker a slot (`pre_fork`) and
frees it when the worker is gone (`child_exit`); a worker frees its own when
it stops accepting.

Why: all workers wait on one listening socket and whichever wakes first
takes most of a burst of new connections (40 opened one after another split
2/38 over two workers); each then stays with its worker while kept alive,
so one worker saturates its core while the other idles (docs/benchmarks.md,
"connection balancing"). Only with two or more gevent workers.

Written against: gunicorn 27.0.1 (ggevent's module-level `StreamServer`,
`cfg.workers`, the arbiter's `WORKERS`), gevent 26.9.0 (StreamServer's
`_do_read`, `do_handle`, `do_close`, `start_accepting`, `stop_accepting`,
`_timer`, `loop`).
Breaks: tests/tuning/test_gunicorn_balance.py (the table across a fork, the
deferral and grace on a real gevent server, gunicorn.conf.py's 40 connections).
Off: `CONVEYOR_TUNING=-gunicorn_balance` (or `off`).
"""

from __future__ import annotations

import mmap
import select
import sys
from functools import cache
from time import monotonic
from typing import Any

# What BalancedStreamServer overrides or calls on gevent's StreamServer.
_GEVENT_HOOKS = ("_do_read", "do_handle", "do_close", "start_accepting", "stop_accepting")
# A slot no live worker publishes in.
FREE = -1
# The attribute of a gunicorn Worker holding its slot.
SLOT_ATTRIBUTE = "conveyor_slot"
# The arbiter's table (made in its on_starting hook; its workers inherit it).
_TABLE: ConnectionTable | None = None


class ConnectionTable:
    """Open connections per worker slot, in memory shared by the arbiter and its workers."""

    def __init__(self, slots: int) -> None:
        self._memory = mmap.mmap(-1, 8 * slots)  # MAP_SHARED: forked workers see the writes
        self.counts = memoryview(self._memory).cast("q")
        for slot in range(slots):
            self.counts[slot] = FREE

    def claim(self, taken: set[int | None]) -> int | None:
        """A slot for a worker about to be forked (None when all are taken: it runs unbalanced)."""
        for slot in range(len(self.counts)):
            if slot not in taken:
                # Not counted until its server accepts: a booting worker takes no share.
                self.counts[slot] = FREE
                return slot
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self.counts[slot] = FREE

    def fewest(self) -> int:
        """The fewest connections any accepting worker holds."""
        return min((count for count in self.counts.tolist() if count >= 0), default=0)


@cache
def balanced_server_class() -> type:
    """gevent's StreamServer, taking a new connection only while its worker holds its share."""
    from gevent.server import StreamServer

    class BalancedStreamServer(StreamServer):
        """gevent's StreamServer that takes a new connection only while it holds its share.

        It counts the connections it is handling and publishes the count in its
        slot. A worker over the fewest any worker holds (plus 1/64 of that, so
        thousands of connections are not balanced one by one) stops watching the
        socket and looks again every `RECHECK_SECONDS`; after `GRACE_SECONDS` of
        a connection waiting it takes it anyway.
        """

        table: ConnectionTable
        slot: int
        GRACE_SECONDS = 0.05
        RECHECK_SECONDS = 0.001

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._open = 0
            self._closed = False
            self._waiting_since: float | None = None
            super().__init__(*args, **kwargs)

        def start_accepting(self) -> None:
            self.table.counts[self.slot] = self._open
            super().start_accepting()

        def close(self) -> None:
            # A worker that stops accepting (shutting down) takes no share.
            self._closed = True
            self.table.counts[self.slot] = FREE
            super().close()

        def _do_read(self) -> None:
            held = self._open
            if held:
                fewest = self.table.fewest()
                if held > fewest + (fewest >> 6):
                    now = monotonic()
                    since = self._waiting_since
                    if since is None:
                        self._waiting_since = since = now
                    if now - since < self.GRACE_SECONDS:
                        self._look_again_later()
                        return
            self._waiting_since = None
            super()._do_read()

        def _look_again_later(self) -> None:
            self.stop_accepting()  # also closes a previous timer
            self._timer = self.loop.timer(self.RECHECK_SECONDS)
            self._timer.start(self._look_again)

        def _look_again(self) -> None:
            if self._closed:
                return
            if not _pending(self.socket):
                self._waiting_since = None  # a peer took it: the next one waits afresh
            self.start_accepting()

        def do_handle(self, *args: Any) -> None:
            self._open += 1
            self.table.counts[self.slot] = self._open
            super().do_handle(*args)

        def do_close(self, *args: Any) -> None:
            self._open -= 1
            if not self._closed:
                self.table.counts[self.slot] = self._open
            super().do_close(*args)

    return BalancedStreamServer


def _pending(sock: Any) -> bool:
    """Whether a connection waits on the listening socket (a poll that never blocks or switches)."""
    poll = _real_poll()
    poll.register(sock.fileno(), select.POLLIN)
    return bool(poll.poll(0))


def _real_poll() -> Any:
    # The select module's own poll, not gevent's monkey-patched stand-in.
    from gevent.monkey import get_original

    return get_original("select", "poll")()


def create_table(workers: int) -> ConnectionTable:
    """In the arbiter, once, before any worker: room for every worker twice over.

    (A reload starts the new workers before the old ones leave.) Workers
    beyond that, added later by signals, get no slot and accept as gunicorn does.
    """
    global _TABLE
    if _TABLE is None:
        _TABLE = ConnectionTable(max(8, 2 * workers + 2))
    return _TABLE


def assign_slot(worker: Any, live_workers: Any) -> None:
    """In the arbiter, before forking `worker`: a slot no live worker holds."""
    if _TABLE is not None:
        taken = {getattr(other, SLOT_ATTRIBUTE, None) for other in live_workers}
        setattr(worker, SLOT_ATTRIBUTE, _TABLE.claim(taken))


def release_slot(worker: Any) -> None:
    """In the arbiter, once `worker` has exited."""
    if _TABLE is not None:
        _TABLE.release(getattr(worker, SLOT_ATTRIBUTE, None))


def install(worker: Any) -> bool:
    """Make `worker` (a gunicorn gevent worker about to run) accept through the balanced server.

    Only with peers to balance against and a slot of its own; returns whether it
    did. A gevent worker that is not shaped as this was written against is
    refused loudly (tuning.refused) and accepts as gunicorn does.
    """
    slot = getattr(worker, SLOT_ATTRIBUTE, None)
    ggevent = sys.modules.get("gunicorn.workers.ggevent")
    if _TABLE is None or slot is None or ggevent is None or worker.cfg.workers < 2:
        return False
    from gevent.server import StreamServer

    from tuning import registry as tuning

    if getattr(ggevent, "StreamServer", None) is not StreamServer:
        tuning.refused("gunicorn_balance", "gunicorn's gevent worker no longer uses StreamServer")
        return False
    missing = [name for name in _GEVENT_HOOKS if not hasattr(StreamServer, name)]
    if missing:
        tuning.refused("gunicorn_balance", f"gevent's StreamServer lacks {', '.join(missing)}")
        return False
    server_class = balanced_server_class()
    server_class.table = _TABLE
    server_class.slot = slot
    ggevent.StreamServer = server_class
    return True

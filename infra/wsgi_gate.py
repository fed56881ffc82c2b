"""A WSGI app run by at most `limit` greenlets at once; the rest wait in arrival order.

A gevent web worker accepts thousands of connections, but the app's work is
CPU under one GIL: past a few dozen requests inside the app at once nothing
goes faster, and each one holds pooled Redis and database connections (past
the Redis pool's size a poll failed over to PostgreSQL, which is how 10,000
clients first overwhelmed a worker). Not gevent's Semaphore: a newcomer
takes a free slot even while others wait, so under sustained overload a
waiting request could starve for many seconds. Here a leaving request hands
its slot straight to the longest waiter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict, Any], Iterable[bytes]]


class Gate:
    """At most `limit` holders at a time; a freed slot goes to the longest waiter."""

    def __init__(self, limit: int) -> None:
        from gevent.event import Event

        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._event = Event
        self.free = limit
        self.waiting: deque[Any] = deque()

    def enter(self) -> None:
        """Take a slot, waiting (cooperatively) behind everyone who came first."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        turn = self._event()
        self.waiting.append(turn)
        try:
            turn.wait()
        except BaseException:
            if turn.is_set():
                self.leave()  # the slot was handed to us as we were cancelled: pass it on
            else:
                self.waiting.remove(turn)
            raise

    def leave(self) -> None:
        """Give the slot to the longest waiter, or back to the free count."""
        if self.waiting:
            self.waiting.popleft().set()
        else:
            self.free += 1


def bounded(app: WSGIApp, limit: int) -> WSGIApp:
    """`app` run by at most `limit` greenlets at a time, first come first served."""
    gate = Gate(limit)

    def bounded_app(environ: dict, start_response: Any) -> Iterable[bytes]:
        gate.enter()
        try:
            return app(environ, start_response)
        finally:
            gate.leave()

    bounded_app.gate = gate  # type: ignore[attr-defined]
    return bounded_app

"""redis-py's zero-timeout readiness check on the operating system's poll() in gevent processes.

Every command redis-py sends first takes a connection from its pool, and the
pool asks the connection whether stray data is waiting (`can_read(timeout=0)`),
which redis-py answers with `select.poll()` on the socket. In a process that
gevent has monkey-patched (worker_ai, and the gevent web and events
processes), `select.poll` is gevent's: a Python object that registers a
watcher with the hub for every check. In `make bench`'s profile of worker_ai
that check was about a tenth of the worker's CPU.

A poll with a zero timeout never blocks, so it needs no cooperation from the
hub: this module gives redis-py's parser the unpatched `poll` for exactly that
check. Any other timeout (a pub/sub read that waits) still goes through
gevent's, so no greenlet ever blocks the process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_PATCHED = "_conveyor_native_zero_poll"


def native_zero_timeout_poll() -> bool:
    """Apply the patch when gevent has patched `select`; True when it is (or was) applied."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return False
    from redis._parsers import hiredis as parser

    current: Callable[[Any, float], bool] = parser._socket_can_read
    if getattr(current, _PATCHED, False):
        return True
    native_poll = monkey.get_original("select", "poll")
    import select

    pollin = select.POLLIN

    def _socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0:
            return current(sock, timeout)
        # TLS bytes already decrypted above the socket, as redis-py checks first.
        if hasattr(sock, "pending") and sock.pending():
            return True
        poller = native_poll()
        poller.register(sock, pollin)
        return bool(poller.poll(0))

    setattr(_socket_can_read, _PATCHED, True)
    parser._socket_can_read = _socket_can_read
    return True

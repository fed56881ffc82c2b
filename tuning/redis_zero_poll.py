"""redis-py's zero-timeout readiness check on the operating system's poll() in gevent processes.

Changes: `redis._parsers.hiredis._socket_can_read` answers a zero-timeout
check with the unpatched `select.poll`; any other timeout (a pub/sub read
that waits) still goes through gevent's, so no greenlet ever blocks the process.

Why: every command redis-py sends first asks its connection whether stray
data is waiting (`can_read(timeout=0)`), with `select.poll()`; under gevent's
monkey-patching that is a Python object registering a hub watcher for every
check, about a tenth of worker_ai's CPU in `make bench`'s profile. A
zero-timeout poll never blocks, so it needs no cooperation from the hub.

Written against: redis 8.1.0 with hiredis 3.5.0 (the private
`redis._parsers.hiredis._socket_can_read`), gevent 26.9.0 (`get_original`).
Breaks: tests/tuning/test_redis_zero_poll.py.
Off: `CONVEYOR_TUNING=-redis_zero_poll` (or `off`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_PATCHED = "_conveyor_native_zero_poll"


def install() -> bool:
    """Apply the patch when gevent has patched `select`; True when it is (or was) applied."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return False
    from redis._parsers import hiredis as parser

    current: Callable[[Any, float], bool] | None = getattr(parser, "_socket_can_read", None)
    if current is None:
        from tuning import registry as tuning

        tuning.refused("redis_zero_poll", "redis-py's hiredis parser has no _socket_can_read")
        return False
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
    _socket_can_read._conveyor_original = current  # type: ignore[attr-defined]
    parser._socket_can_read = _socket_can_read
    return True


def uninstall() -> None:
    """redis-py's own check again (tests)."""
    from redis._parsers import hiredis as parser

    current = parser._socket_can_read
    original = getattr(current, "_conveyor_original", None)
    if original is not None:
        parser._socket_can_read = original

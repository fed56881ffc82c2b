"""redis-py's zero-timeout readiness check on the native poll() in gevent processes (real Redis).

Run in a child process: gevent's monkey-patching must come first and must not
leak into the test process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.environment import REDIS_PREFIX, REDIS_URL, process_environment, tuning_on
from tests.support.processes import ROOT

CHILD = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import select, socket, sys, time
    import gevent, redis
    from redis._parsers import hiredis

    before = hiredis._socket_can_read
    import workers.app  # noqa: F401  (worker_ai's start-up applies the patch)
    patched = hiredis._socket_can_read
    if sys.argv[3] == "off":  # CONVEYOR_TUNING without redis_zero_poll: redis-py's own check
        assert patched is before, "patched although the adjustment is off"
        print("ok")
        sys.exit(0)
    assert patched is not before and patched._conveyor_native_zero_poll, "not patched"
    # The zero-timeout check uses the operating system's poll(), not gevent's.
    calls = []
    real = select.poll
    select.poll = lambda: calls.append(1) or real()
    left, right = socket.socketpair()
    assert patched(left, 0) is False
    right.send(b"+OK\\r\\n")
    time.sleep(0.05)
    assert patched(left, 0) is True
    assert calls == [], "gevent's poll was used for a zero-timeout check"
    # A check that waits still goes through gevent: other greenlets run meanwhile.
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(5)])
    quiet, _peer = socket.socketpair()
    assert patched(quiet, 0.2) is False
    ticker.join()
    assert len(ticks) == 5 and calls, "a waiting check blocked the process"
    select.poll = real
    # And commands through the client pool (which asks before each one) still work.
    client = redis.Redis.from_url(sys.argv[1])
    key = sys.argv[2]
    for n in range(20):
        client.rpush(key, n)
    assert client.llen(key) == 20
    client.delete(key)
    print("ok")
    """
)


def test_worker_ai_checks_redis_connections_without_a_gevent_watcher():
    key = f"{REDIS_PREFIX}gevent-poll"
    mode = "on" if tuning_on("redis_zero_poll") else "off"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, REDIS_URL, key, mode],
        cwd=ROOT,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_nothing_is_patched_without_gevent():
    from redis._parsers import hiredis

    from tuning.redis_zero_poll import install as native_zero_timeout_poll

    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        assert not monkey.is_module_patched("select")
    assert native_zero_timeout_poll() is False
    assert not getattr(hiredis._socket_can_read, "_conveyor_native_zero_poll", False)

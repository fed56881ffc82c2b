"""The web worker's request gate (infra/wsgi_gate.py): a bound, in arrival order, with hand-off.

Run under real gevent greenlets in a child process (this test process is not
monkey-patched), each check printed by the child and asserted here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.environment import process_environment
from tests.support.processes import ROOT

CHILD = textwrap.dedent(
    """
    import gevent
    from gevent.event import Event
    from infra.wsgi_gate import Gate, bounded

    # At most `limit` inside, the rest served in arrival order.
    gate, inside, most, order = Gate(2), [0], [0], []
    def visit(n):
        gate.enter()
        try:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            order.append(n)
            gevent.sleep(0.01)
        finally:
            inside[0] -= 1
            gate.leave()
    gevent.joinall([gevent.spawn(visit, n) for n in range(10)])
    print("bound", most[0] == 2, "fifo", order == list(range(10)), "free", gate.free == 2)

    # A newcomer does not overtake a waiter, even when a slot is free for a moment.
    gate, order = Gate(1), []
    gate.enter()
    waiter = gevent.spawn(lambda: (gate.enter(), order.append("waiter"), gate.leave()))
    gevent.sleep(0)  # the waiter queues
    gate.leave()  # handed straight to the waiter, not back to `free`
    newcomer = gevent.spawn(lambda: (gate.enter(), order.append("newcomer"), gate.leave()))
    gevent.joinall([waiter, newcomer])
    print("handoff", order == ["waiter", "newcomer"], "free", gate.free == 1)

    # A waiter cancelled while queued leaves the line; one cancelled just as its
    # slot was handed over passes the slot on: no slot is ever lost.
    gate = Gate(1)
    gate.enter()
    queued = gevent.spawn(gate.enter)
    gevent.sleep(0)
    queued.kill()
    print("cancelled-waiting", not gate.waiting)
    handed = gevent.spawn(gate.enter)
    behind = gevent.spawn(lambda: (gate.enter(), gate.leave()))
    gevent.sleep(0)
    handed.kill(block=False)  # the kill is delivered after...
    gate.leave()  # ...the slot went to `handed`: it must pass the slot on to `behind`
    behind.join(timeout=2)
    print("cancelled-handed", behind.successful(), "free", gate.free == 1)

    # As WSGI middleware: the app's answer passes through, the slot is freed after an error.
    app = bounded(lambda environ, start: [b"ok"], 1)
    print("wsgi", app({}, None) == [b"ok"], app.gate.free == 1)
    def broken(environ, start):
        raise RuntimeError("boom")
    app = bounded(broken, 1)
    try:
        app({}, None)
    except RuntimeError:
        pass
    print("error-frees", app.gate.free == 1)
    """
)


def test_the_gate_bounds_orders_hands_off_and_survives_cancellation():
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert "bound True fifo True free True" in lines
    assert "handoff True free True" in lines
    assert "cancelled-waiting True" in lines
    assert "cancelled-handed True free True" in lines
    assert "wsgi True True" in lines
    assert "error-frees True" in lines

"""Run one shell command forever: restart it after any exit, with capped exponential back-off.

`make run` wraps every Procfile line in this (scripts/devstack.py), because
honcho stops the whole stack when one process exits; in production compose's
`restart: unless-stopped` does the same job. Usage:

    python -m scripts.supervise --name worker -- 'exec celery -A workers.app worker ...'

The command runs under `/bin/sh -c` in its own process group. When it exits
(any code, any signal) while nobody asked us to stop, what is left of its
group is killed (a dead celery or gunicorn master's children) and it is
started again after 1 s, then 2, 4 ... up to 30 s while it keeps failing; a
run of a minute counts as healthy and resets the delay. Each restart is one
line on stderr. SIGTERM, SIGINT or SIGHUP is passed on to the command's group
and we exit with it; if it has not exited after --stop-timeout seconds (4,
inside honcho's 5) its group is SIGKILLed, so nothing outlives us.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Backoff:
    """Delay before each restart: doubles from `initial` up to `cap`; a healthy run resets it."""

    initial: float = 1.0
    cap: float = 30.0
    healthy_after: float = 60.0
    _next: float | None = None

    def delay(self, ran_for: float) -> float:
        """The wait before restarting a command that just ran for `ran_for` seconds."""
        if self._next is None or ran_for >= self.healthy_after:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay


def describe_exit(returncode: int) -> str:
    """`exit 3` or `signal 9 (SIGKILL)`, as Popen's returncode reads."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {-returncode} ({signal.Signals(-returncode).name})"
    except ValueError:
        return f"signal {-returncode}"


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, signum)


class Supervisor:
    """Keeps one command running until told to stop."""

    def __init__(
        self,
        command: str,
        *,
        name: str = "supervise",
        backoff: Backoff | None = None,
        stop_timeout: float = 4.0,
        log: TextIO = sys.stderr,
    ) -> None:
        self.command = command
        self.name = name
        self.backoff = backoff or Backoff()
        self.stop_timeout = stop_timeout
        self.log = log
        self.child: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.stop_deadline: float | None = None
        self.restarts = 0
        self.returncode = 0

    def say(self, message: str) -> None:
        print(f"supervise[{self.name}]: {message}", file=self.log, flush=True)

    def run(self) -> int:
        """Supervise until a stop signal; return the last exit code (128+N for signal N)."""
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        # Signals arrive as bytes on the pipe, so one select() waits for a
        # stop request, a child's exit (SIGCHLD) or the next deadline.
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, _note_signal)
        self._start()
        while True:
            ready, _, _ = select.select([wakeup_read], [], [], self._timeout())
            received = os.read(wakeup_read, 4096) if ready else b""
            for signum in received:
                if signum in STOP_SIGNALS:
                    self._request_stop(signal.Signals(signum))
            self._reap()
            now = time.monotonic()
            if self.child is None:
                if self.stop_deadline is not None:
                    return self.returncode
                if self.restart_at is not None and now >= self.restart_at:
                    self._start()
            elif self.stop_deadline is not None and now >= self.stop_deadline:
                self.say(f"still running {self.stop_timeout:g}s after the stop signal; SIGKILL")
                _kill_group(self.child.pid, signal.SIGKILL)
                self.stop_deadline = now + 3600  # only the SIGCHLD is left to wait for

    def _timeout(self) -> float | None:
        """Seconds to the next deadline; None waits for a signal (a SIGCHLD waits in the pipe)."""
        deadline = self.stop_deadline if self.child is not None else self.restart_at
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _start(self) -> None:
        self.restart_at = None
        # Its own process group: a stop or a clean-up reaches everything it started.
        self.child = subprocess.Popen(["/bin/sh", "-c", self.command], start_new_session=True)
        self.started_at = time.monotonic()

    def _reap(self) -> None:
        if self.child is None or self.child.poll() is None:
            return
        code, pgid = self.child.returncode, self.child.pid
        self.child = None
        self.returncode = 128 - code if code < 0 else code
        # Whatever the dead leader left behind (pool children) goes with it.
        _kill_group(pgid, signal.SIGKILL)
        if self.stop_deadline is not None:
            return
        ran_for = time.monotonic() - self.started_at
        delay = self.backoff.delay(ran_for)
        self.restarts += 1
        self.restart_at = time.monotonic() + delay
        self.say(
            f"{describe_exit(code)} after {ran_for:.1f}s; restart #{self.restarts} in {delay:g}s"
        )

    def _request_stop(self, signum: signal.Signals) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.stop_timeout
        if self.child is not None:
            # SIGHUP means "stop" here; the command gets the signal it stops on.
            forward = signal.SIGTERM if signum == signal.SIGHUP else signum
            _kill_group(self.child.pid, forward)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """Nothing to do here: the wake-up pipe carries the signal to the loop."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="supervise", help="label of the restart log lines")
    parser.add_argument("--stop-timeout", type=float, default=4.0, help="seconds before SIGKILL")
    parser.add_argument("--initial-delay", type=float, default=1.0, help="first restart delay")
    parser.add_argument("--max-delay", type=float, default=30.0, help="longest restart delay")
    parser.add_argument(
        "--healthy-after", type=float, default=60.0, help="a run this long resets the delay"
    )
    parser.add_argument("command", help="one shell command line, run with /bin/sh -c")
    args = parser.parse_args(argv)
    backoff = Backoff(args.initial_delay, args.max_delay, args.healthy_after)
    supervisor = Supervisor(
        args.command, name=args.name, backoff=backoff, stop_timeout=args.stop_timeout
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

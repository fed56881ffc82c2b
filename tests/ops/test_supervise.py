"""scripts/supervise.py with real processes, and `make run`'s Procfile wrapping every line in it."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

from infra.settings import ROOT
from scripts.devstack import supervised_procfile
from scripts.supervise import Backoff, describe_exit
from tests.support.environment import process_environment
from tests.support.processes import running_server

RESTART_LINE = re.compile(r"supervise\[(\w+)\]: (.+) after [\d.]+s; restart #(\d+) in ([\d.]+)s")


def _wait(predicate: Callable[[], object], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {bound:.0f}s"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _supervise(command: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "scripts.supervise", "--name", "t", *options, "--", command]


def test_backoff_doubles_up_to_30s_and_a_healthy_minute_resets_it() -> None:
    backoff = Backoff()
    assert [backoff.delay(ran_for=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(ran_for=59) == 30
    assert backoff.delay(ran_for=61) == 1
    assert backoff.delay(ran_for=0.5) == 2


def test_describe_exit_names_signals() -> None:
    assert describe_exit(3) == "exit 3"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"


def test_a_command_killed_with_sigkill_comes_back(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    log = tmp_path / "supervise.log"
    argv = _supervise(f"echo $$ >> {pids}; exec sleep 600")
    with running_server(argv, env=process_environment(), log_path=log) as supervisor:
        _wait(lambda: len(_lines(pids)) == 1, 30, "the first start")
        first = int(_lines(pids)[0])
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(_lines(pids)) == 2, 30, "the restart")
        second = int(_lines(pids)[1])
        assert second != first and _alive(second)
        assert supervisor.poll() is None
        restarts = RESTART_LINE.findall(log.read_text())
        assert restarts == [("t", "signal 9 (SIGKILL)", "1", "1")]


def test_sigterm_stops_the_command_its_group_and_the_supervisor(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    log = tmp_path / "supervise.log"
    # A background grandchild shares the command's process group; both must go.
    argv = _supervise(f"sleep 600 & echo $! >> {pids}; echo $$ >> {pids}; exec sleep 600")
    with running_server(argv, env=process_environment(), log_path=log) as supervisor:
        _wait(lambda: len(_lines(pids)) == 2, 30, "the command starting")
        grandchild, child = (int(pid) for pid in _lines(pids))
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=15)
        assert not _alive(child)
        _wait(lambda: not _alive(grandchild), 15, "the grandchild gone")
        assert RESTART_LINE.findall(log.read_text()) == []  # a requested stop is no crash


def test_a_command_ignoring_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    log = tmp_path / "supervise.log"
    argv = _supervise(
        f"trap '' TERM; echo $$ >> {pids}; while :; do sleep 0.1; done", "--stop-timeout", "0.5"
    )
    with running_server(argv, env=process_environment(), log_path=log) as supervisor:
        _wait(lambda: len(_lines(pids)) == 1, 30, "the command starting")
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=15)
        assert not _alive(int(_lines(pids)[0]))
        assert "SIGKILL" in log.read_text()


def test_backoff_grows_while_the_command_keeps_crashing(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    log = tmp_path / "supervise.log"
    # Each start records its time; the command then fails at once.
    command = (
        f"{shlex.quote(sys.executable)} -c 'import time; print(time.time())' >> {starts}; exit 3"
    )
    argv = _supervise(command, "--initial-delay", "0.2", "--max-delay", "0.8")
    with running_server(argv, env=process_environment(), log_path=log) as supervisor:
        _wait(lambda: len(RESTART_LINE.findall(log.read_text())) >= 5, 60, "five restarts")
        assert supervisor.poll() is None
    restarts = RESTART_LINE.findall(log.read_text())[:5]
    assert [exit for _, exit, _, _ in restarts] == ["exit 3"] * 5
    delays = [float(delay) for _, _, _, delay in restarts]
    assert delays == [0.2, 0.4, 0.8, 0.8, 0.8]
    times = [float(t) for t in _lines(starts)][:6]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each start waited at least its announced delay (a lower bound cannot flake).
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


# --- make run: the generated Procfile ------------------------------------------------


def _wrapped(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:4] == ["exec", sys.executable, "-m", "scripts.supervise"], words
    return words[4:]


def test_generated_procfile_wraps_every_procfile_line() -> None:
    original = parse_procfile((ROOT / "Procfile").read_text()).processes
    generated = parse_procfile(supervised_procfile((ROOT / "Procfile").read_text())).processes
    assert list(generated) == list(original)  # same order: honcho hands out $PORT by position
    for name, command in original.items():
        # Flower first waits for a worker to answer (its start-up inspections would fail).
        first = f"{sys.executable} -m scripts.wait_for_workers --timeout 60 && " * (
            name == "flower"
        )
        assert _wrapped(generated[name]) == ["--name", name, "--", first + command]
        subprocess.run(["sh", "-n", "-c", generated[name]], check=True)


def test_honcho_running_the_generated_procfile_restarts_only_the_dead_process(
    tmp_path: Path,
) -> None:
    a_pids, b_pids = tmp_path / "a", tmp_path / "b"
    procfile = tmp_path / "Procfile.supervised"
    procfile.write_text(
        supervised_procfile(
            f"a: echo $$ >> {a_pids}; exec sleep 600\nb: echo $$ >> {b_pids}; exec sleep 600\n"
        )
    )
    argv = [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "-e", os.devnull]
    log = tmp_path / "honcho.log"
    with running_server(argv, env=process_environment(), log_path=log) as honcho:
        _wait(lambda: _lines(a_pids) and _lines(b_pids), 30, "both processes starting")
        os.kill(int(_lines(b_pids)[0]), signal.SIGKILL)
        _wait(lambda: len(_lines(b_pids)) == 2, 30, "b restarting")
        assert honcho.poll() is None, log.read_text()
        assert len(_lines(a_pids)) == 1 and _alive(int(_lines(a_pids)[0]))
        assert RESTART_LINE.search(log.read_text())
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=20)
    for pid in (*_lines(a_pids), *_lines(b_pids)):
        assert not _alive(int(pid))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_other_stop_signals_stop_the_supervisor(tmp_path: Path, signum: int) -> None:
    pids = tmp_path / "pids"
    argv = _supervise(f"echo $$ >> {pids}; exec sleep 600")
    with running_server(argv, env=process_environment(), log_path=tmp_path / "log") as supervisor:
        _wait(lambda: _lines(pids), 30, "the command starting")
        supervisor.send_signal(signum)
        supervisor.wait(timeout=15)
        assert not _alive(int(_lines(pids)[0]))

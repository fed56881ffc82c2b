"""The collector settings of long-running processes (tuning/collector.py)."""

from __future__ import annotations

import gc
import http.client
import json
import sys
import weakref

import pytest
from celery.signals import worker_init, worker_process_init, worker_ready

from tests.support.environment import process_environment, tuning_on
from tests.support.processes import free_port, running_server
from tuning.collector import MIDDLE_THRESHOLD, OLD_THRESHOLD, YOUNG_THRESHOLD, tune_collector

TUNED = (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


@pytest.fixture
def restored_collector():
    """Put this test process's collector back as it was (tune_collector changes it for life)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tuning_freezes_what_is_there_and_still_collects_new_cycles(restored_collector):
    assert gc.get_threshold() != TUNED
    tune_collector()
    assert gc.get_threshold() == TUNED
    assert gc.get_freeze_count() > 0
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle made after tuning: only the collector can free it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def _collections_during(call) -> int:
    seen = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        call()
    finally:
        gc.callbacks.remove(count)
    return len(seen)


@pytest.mark.parametrize(
    ("signal", "collects"),
    [
        (worker_init, True),  # the worker's process, before its pool forks: collect, freeze
        (worker_process_init, False),  # a prefork child: collecting would copy shared pages
        (worker_ready, False),  # the worker's process, children forked (all of gevent's tasks)
    ],
    ids=["before-fork", "prefork-child", "ready"],
)
def test_every_worker_process_tunes_its_collector(restored_collector, signal, collects):
    from tuning.collector import install_worker_signals

    # The signal handlers themselves (wire_process connects them when `collector` is on).
    install_worker_signals()
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    gc.disable()  # only the handler's own collection may be counted
    try:
        collected = _collections_during(lambda: signal.send(sender=None))
    finally:
        gc.enable()
    assert gc.get_threshold() == TUNED
    assert gc.get_freeze_count() > 0
    assert bool(collected) is collects


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_each_web_worker_runs_tuned(tmp_path, worker_class):
    """gunicorn.conf.py as the Procfile runs it (and with gthread): tuned, or stock when off."""
    port = free_port()
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "2"}
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--worker-class",
            worker_class, "--bind", f"127.0.0.1:{port}", "tests.support.gc_probe:app"]  # fmt: skip
    with running_server(argv, env=env, log_path=tmp_path / "web.log", port=port):
        for _ in range(4):  # new connections: the kernel hands them to either worker
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/")
            answer = connection.getresponse()
            assert answer.status == 200
            state = json.loads(answer.read())
            connection.close()
            if tuning_on("collector"):
                assert tuple(state["threshold"]) == TUNED
                assert state["frozen"] > 0
            else:  # CONVEYOR_TUNING=off: CPython's own settings
                assert tuple(state["threshold"]) != TUNED
                assert state["frozen"] == 0

"""Connections spread evenly over gunicorn's gevent workers (tuning/gunicorn_balance.py)."""

from __future__ import annotations

import collections
import http.client
import json
import os
import sys
import time

import gevent
import pytest
from gevent import socket as gsocket

from tests.support.environment import process_environment
from tests.support.processes import free_port, running_server
from tuning.gunicorn_balance import FREE, ConnectionTable, balanced_server_class


def test_table_slots_are_claimed_released_and_shared_with_forked_children():
    table = ConnectionTable(4)
    assert table.claim({0, 1}) == 2
    assert table.claim({0, 1, 2, 3}) is None  # full: that worker runs unbalanced
    assert table.fewest() == 0  # nobody counted yet
    table.counts[0], table.counts[2] = 7, 3
    assert table.fewest() == 3  # FREE slots are not workers
    pid = os.fork()
    if pid == 0:  # a forked worker publishes; the parent must see it
        table.counts[1] = 1
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.counts[1] == 1
    assert table.fewest() == 1
    table.release(1)
    assert table.counts[1] == FREE
    assert table.fewest() == 3


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.005)


@pytest.fixture
def balanced_server():
    """A BalancedStreamServer in slot 0 of a two-slot table; slot 1 stands for its peer."""
    table = ConnectionTable(2)

    class Server(balanced_server_class()):
        GRACE_SECONDS = 60.0  # the peer never takes over on its own in these tests

    Server.table, Server.slot = table, 0

    def hold(sock, _address):
        while sock.recv(1024):  # keep the connection until the client closes it
            pass

    server = Server(("127.0.0.1", 0), hold)
    server.start()
    clients: list = []

    def connect():
        clients.append(gsocket.create_connection(server.address, timeout=5))
        return clients[-1]

    yield server, table, connect
    for client in clients:
        client.close()
    server.close()


def test_a_worker_over_its_share_leaves_new_connections_to_its_peer(balanced_server):
    _server, table, connect = balanced_server
    table.counts[1] = 0  # the peer accepts and holds nothing
    assert table.counts[0] == 0
    first = connect()
    _wait_for(lambda: table.counts[0] == 1)  # at the fewest: taken
    connect()
    gevent.sleep(0.3)  # many rechecks
    assert table.counts[0] == 1, "took a connection while holding more than its peer"
    table.counts[1] = 1  # the peer took its share: now this worker is at the fewest again
    _wait_for(lambda: table.counts[0] == 2)
    first.close()  # a connection that ends is no longer counted
    _wait_for(lambda: table.counts[0] == 1)


def test_a_peer_that_does_not_accept_holds_a_connection_back_only_for_the_grace(balanced_server):
    server, table, connect = balanced_server
    table.counts[1] = 0
    connect()
    _wait_for(lambda: table.counts[0] == 1)
    server.GRACE_SECONDS = 0.05  # the peer stays at 0, as a stuck worker would
    connect()
    connect()
    _wait_for(lambda: table.counts[0] == 3)


def test_a_closed_server_takes_no_share(balanced_server):
    server, table, connect = balanced_server
    table.counts[1] = 5  # the peer holds more than this worker
    connect()
    _wait_for(lambda: table.counts[0] == 1)
    assert table.fewest() == 1
    server.close()
    assert table.counts[0] == FREE
    assert table.fewest() == 5  # the peer's count alone: a closing worker is no longer the fewest


def _worker_pid(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/")
    answer = connection.getresponse()
    assert answer.status == 200
    return json.loads(answer.read())["pid"]


def test_the_procfile_web_spreads_kept_alive_connections_evenly(tmp_path):
    """gunicorn.conf.py as written, two gevent workers: 40 connections kept open split 20/20.

    Without the table the first worker to wake takes most (2/38 and 17/23 were seen).
    """
    port = free_port()
    # The adjustment itself is under test: on whatever CONVEYOR_TUNING says.
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "2"}
    env["CONVEYOR_TUNING"] = "on"
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "tests.support.gc_probe:app"]  # fmt: skip
    with running_server(argv, env=env, log_path=tmp_path / "web.log", port=port):
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2:  # both workers booted and accepting
            assert time.monotonic() < deadline, "the second worker never answered"
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            seen.add(_worker_pid(probe))
            probe.close()
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(40)]
        try:
            split = collections.Counter(_worker_pid(c) for c in connections)
        finally:
            for connection in connections:
                connection.close()
    assert set(split) == seen
    fewer, more = sorted(split.values())
    assert more - fewer <= 2, split

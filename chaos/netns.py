"""Network namespaces for the several-hosts scenario: a private bridge and one veth per host.

Every address lives inside the namespaces this module creates (a private /24
on a bridge in its own "switch" namespace), so no packet can leave them.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

# From <sched.h>: setns(2) into a network namespace.
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def inside(namespace: str | None) -> Iterator[None]:
    """Run the calling thread inside `namespace` (None: stay where it is).

    Python 3.11 has no os.setns; setns(2) switches only the calling thread,
    and sockets opened meanwhile stay in the namespace after we switch back.
    Threads started inside inherit the namespace.
    """
    if namespace is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Network:
    """Hosts (namespaces) on one bridge; each host has `eth0` with an address in `subnet`.0/24."""

    def __init__(self, tag: str, subnet: str = "10.231.7") -> None:
        self.tag = tag
        self.subnet = subnet
        self.switch = f"{tag}-sw"
        self.addresses: dict[str, str] = {}
        self._namespaces: list[str] = []

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def create(self, hosts: list[str]) -> None:
        """The switch namespace with its bridge, then each host plugged into it."""
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for number, host in enumerate(hosts, start=2):
            namespace = self.namespace(host)
            self._add_namespace(namespace)
            # Both ends are created directly in their namespaces: nothing
            # appears in the machine's own network namespace, even briefly.
            _ip(
                "link", "add", "eth0", "netns", namespace, "type", "veth",
                "peer", "name", f"v-{host}", "netns", self.switch,
            )  # fmt: skip
            _ip("-n", self.switch, "link", "set", f"v-{host}", "master", "br0", "up")
            address = f"{self.subnet}.{number}"
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            self.addresses[host] = address

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def cut(self, host: str) -> None:
        """Unplug `host`: its switch port goes down, so its packets go nowhere."""
        _ip("-n", self.switch, "link", "set", f"v-{host}", "down")

    def exec_argv(self, host: str) -> list[str]:
        """The argv prefix that runs a command on `host`."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def destroy(self) -> None:
        """Delete every namespace created (their veths and the bridge go with them)."""
        for namespace in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self._namespaces.clear()

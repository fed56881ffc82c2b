"""Thousands of keep-alive clients, each polling now and then, from one asyncio process.

What a crowd of users waiting on their jobs looks like to `web`: every client
holds one HTTP/1.1 connection open and sends one GET every ~`interval` seconds
(jittered), so most connections sit idle most of the time. Raw asyncio streams,
standard library only; loopback only; bounded in time and in connections.

    python -m bench.waiting_clients --port 8000 --clients 10000 --path /healthz
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Descriptors beyond the clients' own sockets: the interpreter, logs, the event loop.
FD_SLACK = 256
MAX_CLIENTS = 20_000


@dataclass
class CrowdResult:
    """What the crowd saw: peak open connections, requests answered, errors by kind, latencies."""

    clients: int
    connected_peak: int = 0
    requests: int = 0
    errors: Counter = field(default_factory=Counter)
    # Answers that came whole with Connection: close (a worker being recycled
    # or shutting down): not errors, but the client had to reconnect.
    closed_after_answer: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this client process's own CPU (it shares the box with web)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, pct: int) -> float | None:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else None
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[pct - 1]

    def summary(self) -> str:
        p50, p99 = self.percentile(50), self.percentile(99)
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items())) or "none"
        return (
            f"{self.clients} clients, peak {self.connected_peak} connected, "
            f"{self.requests} requests in {self.seconds:.0f} s, errors: {errors}, "
            f"{self.closed_after_answer} closed after an answer, "
            f"p50 {p50 or 0:.1f} ms, p99 {p99 or 0:.1f} ms, client CPU {self.cpu_seconds:.1f} s"
        )


def raise_open_files(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE toward `wanted` (up to the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class _Crowd:
    def __init__(self, host: str, port: int, result: CrowdResult, deadline: float) -> None:
        self.host, self.port, self.result, self.deadline = host, port, result, deadline
        self.open = 0

    def _opened(self) -> None:
        self.open += 1
        self.result.connected_peak = max(self.result.connected_peak, self.open)

    async def client(
        self, start_at: float, request: bytes, interval: float, timeout: float
    ) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        writer = None
        # The first poll lands anywhere in one interval, so the crowd's load is even.
        next_poll = loop.time() + random.uniform(0, interval)
        try:
            while loop.time() < self.deadline:
                if writer is None:
                    try:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_connection(self.host, self.port), timeout
                        )
                    except (OSError, TimeoutError) as exc:
                        self.result.errors[f"connect {type(exc).__name__}"] += 1
                        await asyncio.sleep(interval)
                        continue
                    self._opened()
                await asyncio.sleep(max(0.0, next_poll - loop.time()))
                if loop.time() >= self.deadline:
                    break
                started = time.perf_counter()
                try:
                    writer.write(request)
                    status, keep = await asyncio.wait_for(_read_response(reader), timeout)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    kind = {
                        asyncio.IncompleteReadError: "closed by server",
                        TimeoutError: "timeout",
                    }.get(type(exc), type(exc).__name__)
                    self.result.errors[kind] += 1
                    writer = self._close(writer)
                    next_poll = loop.time() + interval * random.uniform(0.8, 1.2)
                    continue
                # As a waiting client does: the next poll ~interval after this answer.
                next_poll = loop.time() + interval * random.uniform(0.8, 1.2)
                self.result.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.result.requests += 1
                if not 200 <= status < 400:
                    self.result.errors[f"HTTP {status}"] += 1
                if not keep:
                    # The server ended keep-alive: the next poll pays a new connection.
                    self.result.closed_after_answer += 1
                    writer = self._close(writer)
        finally:
            if writer is not None:
                self._close(writer)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        writer.close()
        return None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the connection stays open) of one HTTP/1.1 response; the body is read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
        elif name == "transfer-encoding":
            raise ValueError("chunked responses are not expected from these routes")
    if length:
        await reader.readexactly(length)
    return status, keep


async def crowd(
    host: str,
    port: int,
    paths: Sequence[str],
    *,
    clients: int,
    interval: float = 5.0,
    ramp: float = 10.0,
    duration: float = 30.0,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> CrowdResult:
    """`clients` connections opened over `ramp` s, each polling one of `paths` for `duration` s."""
    if host not in LOOPBACK:
        raise ValueError(f"the crowd only talks to loopback, not {host!r}")
    if not 0 < clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}")
    result = CrowdResult(clients)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode() for path in paths
    ]
    loop = asyncio.get_running_loop()
    begin = loop.time()
    state = _Crowd(host, port, result, begin + ramp + duration)
    tasks = [
        asyncio.create_task(
            state.client(begin + ramp * i / clients, requests[i % len(requests)], interval, timeout)
        )
        for i in range(clients)
    ]
    # Every client stops by the deadline; the extra time covers one timed-out request.
    done, pending = await asyncio.wait(tasks, timeout=ramp + duration + timeout + 5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            result.errors[f"client crashed: {type(task.exception()).__name__}"] += 1
    result.seconds = loop.time() - begin
    return result


def run(
    host: str, port: int, paths: Sequence[str], *, clients: int, **kwargs: float | dict
) -> CrowdResult:
    """`crowd` in a fresh event loop, after raising the open-files limit for `clients` sockets."""
    limit = raise_open_files(clients + FD_SLACK)
    if limit < clients + FD_SLACK:
        raise RuntimeError(f"open-files limit {limit} is too low for {clients} clients")
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(crowd(host, port, paths, clients=clients, **kwargs))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting_clients", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--token", default="")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    result = run(
        args.host, args.port, args.path or ["/healthz"], clients=args.clients,
        interval=args.interval, ramp=args.ramp, duration=args.duration, headers=headers,
    )  # fmt: skip
    print(result.summary())
    return 0 if result.error_count == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Many Server-Sent Event streams from one asyncio process: for `make bench` and the tests.

Each stream is one TCP connection speaking HTTP/1.0 (no chunked framing: the
body is the event stream itself until the server closes it), so thousands fit
in one process with nothing but the standard library.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class StreamResult:
    """What one stream saw: its HTTP status, its events (id, type, data), and when each came."""

    path: str
    status: int = 0
    events: list[tuple[str | None, str, dict]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    closed_by_server: bool = False
    error: str | None = None

    @property
    def states(self) -> list[str]:
        return [data.get("state", "") for _id, kind, data in self.events if kind != "notification"]

    @property
    def terminal(self) -> bool:
        return bool(self.states) and self.states[-1] in TERMINAL


async def read_stream(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    result: StreamResult,
    *,
    on_event: Callable[[StreamResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> StreamResult:
    """Open `path`, collect its events until the server closes it (or `stop` is set)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    try:
        lines = [f"GET {path} HTTP/1.0", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        result.status = int(status_line.split()[1]) if status_line else 0
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        fields: dict[str, str] = {}
        waiter = asyncio.ensure_future(stop.wait()) if stop is not None else None
        while True:
            read = asyncio.ensure_future(reader.readline())
            pending = {read} if waiter is None else {read, waiter}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                break
            line = read.result()
            if not line:
                result.closed_by_server = True
                break
            text = line.decode().rstrip("\r\n")
            if text.startswith(":"):
                continue
            if text:
                name, _, value = text.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                result.events.append(
                    (fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
                )
                result.arrivals.append(time.time())
                if on_event is not None:
                    on_event(result)
            fields = {}
        if waiter is not None:
            waiter.cancel()
    except (OSError, ValueError, IndexError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
    return result


async def open_many(
    host: str,
    port: int,
    paths: Sequence[str],
    headers: dict[str, str],
    *,
    connect_batch: int = 200,
    on_event: Callable[[StreamResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[list[StreamResult], list[asyncio.Task]]:
    """One stream per path, `connect_batch` connections at a time; results fill as they run."""
    results = [StreamResult(path) for path in paths]
    tasks: list[asyncio.Task] = []
    for start in range(0, len(paths), connect_batch):
        for result in results[start : start + connect_batch]:
            tasks.append(
                asyncio.create_task(
                    read_stream(
                        host, port, result.path, headers, result, on_event=on_event, stop=stop
                    )
                )
            )
        await asyncio.sleep(0.05)  # let the batch connect before the next one
    return results, tasks


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (up to the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target

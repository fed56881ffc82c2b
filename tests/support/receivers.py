"""A real HTTP server on loopback that records what it receives and answers from a script."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class Receiver:
    """What the server got; `statuses` are answered in order, then 200 for ever."""

    base_url: str
    statuses: list[int] = field(default_factory=list)
    redirect_to: str | None = None
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"{self.base_url}{path}"

    def wait_for(self, count: int, bound: float = 30.0) -> list[Received]:
        """The first `count` requests, once they have arrived (fails after `bound` seconds)."""
        deadline = time.monotonic() + bound
        while True:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
                got = len(self.requests)
            assert time.monotonic() < deadline, f"{got} of {count} requests in {bound:.0f}s"
            time.sleep(0.05)


@contextmanager
def running_receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    """A receiver on a free loopback port, stopped on exit."""
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if self.path.startswith("/redirect"):
                    status = 302
                receiver.requests.append(
                    Received(self.path, dict(self.headers.items()), body, status, time.time())
                )
            self.send_response(status)
            if status == 302:
                self.send_header("Location", receiver.url("/redirected"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}", list(statuses or []))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

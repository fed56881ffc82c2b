"""gunicorn's responses with their head and first body bytes in one write.

gunicorn's `Response.write` sends the head (status line and headers) with one
`sendall` and the body with another: two system calls and two TCP segments
for every small JSON answer, which the client then reads in two. Patched by
`send_head_with_body()` (gunicorn.conf.py, in every worker), the first write
of a response that is not chunked runs gunicorn's own code unchanged but
collects what it sends, then sends that at once. Chunked bodies, sendfile,
later writes and a response with no body go out exactly as before.

This reaches into gunicorn's Response (its `sock` attribute and `write`), so
it is guarded: applied once, a no-op without gunicorn, and tested against
gunicorn's own output byte for byte (tests/ops/test_gunicorn_writes.py).
"""

from __future__ import annotations

from typing import Any

_ORIGINAL = "_conveyor_original"


class _Collected:
    """Stands in for the socket while gunicorn writes a response's head and first bytes."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(data)


def send_head_with_body() -> bool:
    """Patch gunicorn's Response (once); False when gunicorn is not installed."""
    try:
        from gunicorn.http import wsgi as gunicorn_wsgi
    except ImportError:
        return False
    response_class = gunicorn_wsgi.Response
    current = response_class.write
    if getattr(current, _ORIGINAL, None) is None:
        response_class.write = _one_write(current)
    return True


def _one_write(original: Any) -> Any:
    def write(self: Any, data: bytes) -> None:
        if self.headers_sent or self.chunked or type(data) is not bytes:
            return original(self, data)
        sock = self.sock
        collected = _Collected()
        self.sock = collected
        try:
            original(self, data)
        finally:
            self.sock = sock
            if collected.parts:
                sock.sendall(b"".join(collected.parts))
        return None

    setattr(write, _ORIGINAL, original)
    write.__doc__ = original.__doc__
    return write

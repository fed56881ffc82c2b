"""gunicorn's responses with their head and first body bytes in one write.

Changes: `gunicorn.http.wsgi.Response.write`; the first write of a response
that is not chunked runs gunicorn's own code unchanged against a stand-in
socket that collects what it sends, then sends that in one `sendall`.
Chunked bodies, sendfile, later writes and a response with no body go out
exactly as before.

Why: gunicorn sends the head and the body with two `sendall`s: two system
calls and two TCP segments for every small JSON answer, which the client
then reads in two (docs/benchmarks.md, "one write").

Written against: gunicorn 27.0.1 (its Response's `sock`, `write`,
`headers_sent`, `chunked`).
Breaks: tests/tuning/test_gunicorn_one_write.py (byte for byte against
gunicorn's own output, through a real gunicorn too).
Off: `CONVEYOR_TUNING=-gunicorn_one_write` (or `off`).
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


def install() -> bool:
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


def uninstall() -> None:
    """gunicorn's own `Response.write` again (tests)."""
    from gunicorn.http import wsgi as gunicorn_wsgi

    original = getattr(gunicorn_wsgi.Response.write, _ORIGINAL, None)
    if original is not None:
        gunicorn_wsgi.Response.write = original

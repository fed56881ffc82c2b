"""The AI provider's POSTs on plain keep-alive `http.client` connections instead of httpx.

Changes: `OpenAIProvider` (shared/ai/openai_provider.py) is handed
`KeepAliveConnections` by the worker (workers/ai_runtime.py) and sends its
calls through them: a free list of connections to one origin, each used by
one call at a time, kept alive between calls, with answers handed back as
`httpx.Response` so the provider reads status, headers and JSON as before.
It covers what the provider needs and no more: no proxies (the provider
keeps httpx when the environment configures one, or a test injects a
transport), no redirects, no compression (it asks for identity), TLS with
the context httpx would build (`httpx.create_ssl_context`).

Why: the AI worker makes one upstream call per job, up to 100 at once on one
core; through httpx each call cost ~1 ms of CPU, half of it httpx's own
layers, and `http.client` does the same exchange for about a third of that
(docs/benchmarks.md, "AI worker").

Written against: httpx 0.28.1 (`httpx.Response`'s constructor, `create_ssl_context`).
Breaks: tests/tuning/test_ai_plain_http.py; the provider's behaviour on both
paths is tests/domain/test_ai_providers.py.
Off: `CONVEYOR_TUNING=-ai_plain_http` (or `off`): every call goes through httpx.
"""

from __future__ import annotations

import http.client
import select
import ssl
import urllib.parse
from collections.abc import Mapping

import httpx


class KeepAliveConnections:
    """Connections to one origin (scheme://host:port), each serving one call at a time."""

    def __init__(self, base_url: str, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/")
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._idle: list[http.client.HTTPConnection] = []
        self._all: list[http.client.HTTPConnection] = []

    @property
    def open_connections(self) -> int:
        """Connections made so far (as many as calls ever ran at once)."""
        return len(self._all)

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST `body` to the base URL's path + `path`; the whole answer, read.

        Raises TimeoutError when a connect, send or read waits longer than the
        timeout, and another of `TransportErrors` when the exchange fails.
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connection()
        try:
            if conn.sock is not None and _closed_by_peer(conn.sock):
                # The server ended this kept-alive connection while it sat
                # idle: open a new one rather than send into a dead socket.
                conn.close()
            conn.request("POST", self._path + path, body=body, headers=headers)
            answer = conn.getresponse()
            content = answer.read()
            if answer.will_close:
                conn.close()
        except BaseException:
            conn.close()  # a half-done exchange leaves the connection unusable
            raise
        finally:
            # Most recently used first: its connection is the likeliest still open.
            self._idle.append(conn)
        return httpx.Response(answer.status, headers=answer.getheaders(), content=content)

    def close(self) -> None:
        """Close every connection."""
        for conn in self._all:
            conn.close()
        self._idle.clear()
        self._all.clear()

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._all.append(conn)
        return conn


def _closed_by_peer(sock: object) -> bool:
    """Whether an idle connection's socket has something to read: only its end, or garbage."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)

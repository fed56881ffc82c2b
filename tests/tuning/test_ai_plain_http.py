"""The AI provider's plain keep-alive connections (tuning/ai_plain_http.py), on loopback servers."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.ai.providers import OpenAIProvider
from shared.ai.request import AIRequest
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tuning.ai_plain_http import KeepAliveConnections

TEXT = AIRequest("text", "keep the connection", {})


@pytest.fixture
def upstream():
    with FakeOpenAIServer() as server:
        yield server


def test_calls_one_after_another_share_one_connection(upstream):
    connections = KeepAliveConnections(upstream.base_url, 5.0, None)
    try:
        for _ in range(3):
            answer = connections.post("/chat/completions", b'{"messages": []}', {})
            assert answer.status_code == 200 and "choices" in answer.json()
        assert connections.open_connections == 1
    finally:
        connections.close()


def test_calls_at_once_each_get_their_own_connection(upstream):
    upstream.push(*(Scripted(content="slow", delay=0.5) for _ in range(3)))
    connections = KeepAliveConnections(upstream.base_url, 5.0, None)
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda _: connections.post("/chat/completions", b"{}", {}), range(3))
            )
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert upstream.max_in_flight == 3 and connections.open_connections == 3
    finally:
        connections.close()


class _OneAnswerPerConnection:
    """Answers each connection's first request (keep-alive, by HTTP/1.1) and then hangs up."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self.hung_up = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(body) < length:
                    body += conn.recv(65536)
                reply = json.dumps(
                    {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
            self.hung_up.set()

    def close(self) -> None:
        self._listener.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_used():
    server = _OneAnswerPerConnection()
    provider = OpenAIProvider(
        server.base_url, "sk-test", "m", "i", 5.0, plain_http=KeepAliveConnections
    )
    try:
        assert provider.generate(TEXT)["text"] == "hi"
        assert server.hung_up.wait(5)
        # Sent into the dead socket, the call would fail (ai_unavailable).
        assert provider.generate(TEXT)["text"] == "hi"
        assert server.accepted == 2
    finally:
        provider.close()
        server.close()

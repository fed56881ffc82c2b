"""A real HTTP server on loopback that speaks just enough of OpenAI's API for tests.

    server = FakeOpenAIServer().start()          # or the `openai_server` fixture
    provider = OpenAIProvider(server.base_url, "sk-test", "gpt-test", "img-test", 5)
    server.push(Scripted(status=429, headers={"Retry-After": "7"}))
    server.push(Scripted(content='{"title": ...}'), Scripted(delay=2))
    ...
    assert server.calls == 2 and server.requests[0].headers["authorization"] == "Bearer sk-test"
    server.close()

Routes: `POST /v1/chat/completions` and `POST /v1/images/generations`. Each
request takes the next `Scripted` response from one FIFO queue; when the
queue is empty the default reply is a valid answer: for chat, echo text, or
for `response_format: json_object` an outline with as many cards as the
prompt's "exactly N cards" asks for; for images, a fake https URL.
With `api_key=` set, requests with another bearer token get OpenAI's 401,
whose message echoes the token as OpenAI does (to test redaction).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"
IMAGES_PATH = "/v1/images/generations"
_CARD_COUNT = re.compile(r"exactly (\d+) cards")


@dataclass
class Scripted:
    """One scripted answer; the first of raw/body/content/image that is set wins."""

    status: int = 200
    content: str | None = None  # chat: the assistant message content
    body: Any = None  # any JSON body, sent as-is
    raw: bytes | None = None  # bytes sent as-is, e.g. malformed JSON
    image_url: str | None = None
    b64_json: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without answering
    finish_reason: str = "stop"


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)  # for gaps between requests
    # The client's source port: which process made the call (tests/integration/test_poison_jobs.py).
    peer_port: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def outline_json(num_cards: int, title: str = "Fake deck", bullets: int = 3) -> str:
    """A valid presentation outline, as the model's message content."""
    cards = [
        {"title": f"Card {n}", "bullets": [f"Point {n}.{b}" for b in range(1, bullets + 1)]}
        for n in range(1, num_cards + 1)
    ]
    return json.dumps({"title": title, "cards": cards})


def chat_body(content: str, model: str = "fake-model", finish_reason: str = "stop") -> dict:
    """A chat completion in OpenAI's response shape."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def image_body(url: str | None = None, b64_json: str | None = None) -> dict:
    """An image generation in OpenAI's response shape."""
    item = {"b64_json": b64_json} if b64_json is not None else {"url": url}
    return {"created": int(time.time()), "data": [item]}


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None):
    """An error in OpenAI's shape."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAIServer:
    """A scriptable OpenAI stand-in on 127.0.0.1 and an ephemeral port."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._script: deque[Scripted] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._closing = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        # A short poll interval keeps close() (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What to pass as `AI_BASE_URL`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; requests still sleeping in a delay wake up and end."""
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def push(self, *responses: Scripted) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(responses)

    def reset(self) -> None:
        """Forget the script and the request log."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most scripted or default answers that were being prepared at once."""
        with self._lock:
            return self._max_in_flight

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next(self, request: RecordedRequest) -> Scripted:
        """Record `request` and take its answer off the script."""
        with self._lock:
            self._requests.append(request)
            if self._script:
                return self._script.popleft()
        return self.default(request)

    def default(self, request: RecordedRequest) -> Scripted:
        """The answer when nothing is scripted; override in a subclass to change it."""
        payload = request.json or {}
        if request.path == IMAGES_PATH:
            digest = hashlib.sha256(str(payload.get("prompt")).encode()).hexdigest()[:16]
            return Scripted(image_url=f"https://images.fake.invalid/{digest}.png")
        messages = payload.get("messages") or [{}]
        if (payload.get("response_format") or {}).get("type") == "json_object":
            match = _CARD_COUNT.search(str(messages[0].get("content")))
            return Scripted(content=outline_json(int(match.group(1)) if match else 3))
        return Scripted(content=f"Fake completion: {messages[-1].get('content')}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of new
    # connections (a gevent worker opens dozens at once); their 1 s
    # retransmit would then look like the client failing to overlap calls.
    request_queue_size = 128
    # Don't join handler threads on close: one may be mid-delay for a client
    # that timed out long ago.
    block_on_close = False
    fake: FakeOpenAIServer

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out hang up mid-answer; that is the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    # The head and the body go out as two writes; with Nagle's algorithm on,
    # the body waited for the client's delayed ACK of the head, adding ~40 ms
    # to every call on a kept-alive connection (a 1 s upstream answered in
    # ~1.04 s). Servers in front of real APIs set TCP_NODELAY.
    disable_nagle_algorithm = True
    timeout = 10  # idle keep-alive connections end eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        recorded = RecordedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length),
            peer_port=self.client_address[1],
        )
        if recorded.path not in (CHAT_PATH, IMAGES_PATH):
            fake._record(recorded)
            self._send(404, json.dumps(error_body(f"Unknown path {self.path}")).encode(), {})
            return
        token = recorded.headers.get("authorization", "").removeprefix("Bearer ")
        if fake.api_key is not None and token != fake.api_key:
            fake._record(recorded)
            message = f"Incorrect API key provided: {token}."
            body = error_body(message, code="invalid_api_key")
            self._send(401, json.dumps(body).encode(), {})
            return
        scripted = fake._next(recorded)
        # Counted from arrival to the last byte: overlapping clients overlap here.
        fake._enter()
        try:
            if scripted.delay and fake._closing.wait(scripted.delay):
                return
            if scripted.drop:
                self.close_connection = True
                return
            self._send(scripted.status, self._body(scripted, recorded), scripted.headers)
        finally:
            fake._leave()

    def _body(self, scripted: Scripted, recorded: RecordedRequest) -> bytes:
        if scripted.raw is not None:
            return scripted.raw
        if scripted.body is not None:
            return json.dumps(scripted.body).encode()
        if scripted.status >= 400:
            return json.dumps(error_body(f"Scripted HTTP {scripted.status}")).encode()
        if recorded.path == IMAGES_PATH:
            return json.dumps(image_body(scripted.image_url, scripted.b64_json)).encode()
        model = (recorded.json or {}).get("model", "fake-model")
        body = chat_body(scripted.content or "", model, scripted.finish_reason)
        return json.dumps(body).encode()

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

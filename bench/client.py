"""A small keep-alive JSON client for the benchmark's own set-up and latency probes."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


class ApiClient:
    """One persistent HTTP/1.1 connection per thread to one base URL."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.token = token
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body); reconnects once if the server closed the socket."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None if body is None else json.dumps(body)
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # gunicorn recycles workers (max_requests): a kept-alive socket may be gone.
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        return response.status, (json.loads(data) if data else None)

    def expect(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, data = self.request(method, path, body)
        if code != status:
            raise RuntimeError(f"{method} {path} answered {code}, expected {status}: {data}")
        return data


def login(client: ApiClient, username: str, password: str) -> str:
    """Register `username` and return a bearer token for it."""
    credentials = {"username": username, "password": password}
    client.expect("POST", "/api/v1/auth/register", credentials, 201)
    data = client.expect("POST", "/api/v1/auth/login", credentials)
    return data["access_token"]


def submit_many(
    client: ApiClient, path: str, bodies: Iterable[Any], *, threads: int = 8
) -> list[str]:
    """POST every body (202 expected) from `threads` connections; the task ids, in order."""

    def one(body: Any) -> str:
        return client.expect("POST", path, body, 202)["task_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

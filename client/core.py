"""ConveyorClient: submit, status, wait, events, cancel over Conveyor's HTTP API."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from client import sse
from client.errors import ApiError, ConveyorError, StreamUnavailable, Unreachable, WaitTimeout

TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
STATES = frozenset({"PENDING", "STARTED", "PROGRESS", "RETRY"}) | TERMINAL
JobType = Literal["transaction", "random", "ai", "cache_warm"]
JOB_PATHS: dict[str, str] = {
    "transaction": "/api/v1/transactions",
    "random": "/api/v1/transactions/random",
    "ai": "/api/v1/ai/generate",
    "cache_warm": "/api/v1/cache/warm",
}
# Answers worth the same request again after the server's Retry-After.
RETRYABLE = frozenset({429, 503})
DEFAULT_POLL_SECONDS = 1.0
# A Retry-After beyond this is not waited for by a retrying call; the error surfaces.
MAX_RETRY_AFTER_SECONDS = 60.0
# A connection not made within this is not coming: loopback and LAN answer in
# milliseconds, and it allows one lost SYN (resent after 1 s) over the internet.
CONNECT_TIMEOUT_SECONDS = 2.0
# Pauses between connection attempts that found nothing listening (a restart's
# moment): about 2 s in all, then Unreachable. No request was sent, so any
# method may be tried again.
CONNECT_RETRY_DELAYS = (0.2, 0.4, 0.8)


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: its id, type (state, progress, notification) and document."""

    id: str | None
    type: str
    data: dict[str, Any]


class ConveyorClient:
    """A typed client for one Conveyor API; `transport` swaps the network (tests, proxies)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        events_url: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Streams may be served by another process (the `events` process type).
        self.events_url = (events_url or base_url).rstrip("/")
        self.token = token
        self.max_retries = max_retries
        self._sleep = sleep
        # Building a verifying TLS context loads the CA bundle (about half a
        # second): only worth it when some URL is https. Nothing follows a
        # redirect, so a plain-http client can never end up on TLS.
        tls = any(url.startswith("https:") for url in (self.base_url, self.events_url))
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
            transport=transport,
            follow_redirects=False,
            verify=tls,
        )

    def __enter__(self) -> ConveyorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- accounts -----------------------------------------------------------------

    def register(self, username: str, password: str) -> dict[str, Any]:
        """Create an account."""
        return self._call(
            "POST", "/api/v1/auth/register", {"username": username, "password": password}
        )

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in; the token is kept for every later call and returned with the answer."""
        answer = self._call(
            "POST", "/api/v1/auth/login", {"username": username, "password": password}
        )
        self.token = answer["access_token"]
        return answer

    # --- jobs ---------------------------------------------------------------------

    def submit(
        self,
        job: JobType,
        body: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job; the 202 body (`task_id`, `kind`, `state`, `status_url`).

        Every retry of this call (after a 429 or 503, or a lost connection)
        sends the same Idempotency-Key, so at most one job is created.
        """
        if job not in JOB_PATHS:
            raise ValueError(f"unknown job type {job!r}; one of {', '.join(JOB_PATHS)}")
        key = idempotency_key or f"conveyor-client-{uuid.uuid4()}"
        return self._call(
            "POST", JOB_PATHS[job], body or {}, headers={"Idempotency-Key": key}, retry_errors=True
        )

    def status(self, task_id: str) -> dict[str, Any]:
        """The job's status document."""
        return self._status(task_id)[0]

    def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        id_prefix: str | None = None,
        page: int = 1,
        limit: int = 20,
    ) -> dict[str, Any]:
        """The caller's jobs, newest first (`items`, `page`, `limit`, `total`).

        `id_prefix` keeps those whose id starts with it (`5a62313e`).
        """
        params = {
            "page": page, "limit": limit, "state": state, "kind": kind, "id_prefix": id_prefix
        }  # fmt: skip
        return self._call(
            "GET", "/api/v1/tasks", params={k: v for k, v in params.items() if v is not None}
        )

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel an unfinished job; its status (REVOKED). A finished one raises 409."""
        return self._call("DELETE", f"/api/v1/tasks/{task_id}")

    def wallet(self) -> dict[str, Any]:
        """The caller's balance (`balance` in minor units, `currency`, `from_cache`)."""
        return self._call("GET", "/api/v1/wallet")

    def failed_jobs(self, *, page: int = 1, limit: int = 50, **filters: Any) -> dict[str, Any]:
        """Failed jobs (admin): filters kind, error_code, user_id, since, until; newest first."""
        params = {"page": page, "limit": limit, **filters}
        return self._call(
            "GET",
            "/api/v1/system/failed-jobs",
            params={k: v for k, v in params.items() if v is not None},
        )

    def replay_failed(
        self,
        *,
        task_ids: list[str] | None = None,
        filters: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Run failed jobs again (admin): these task ids, or every failed job matching `filters`."""
        body: dict[str, Any] = {"dry_run": dry_run}
        if task_ids is not None:
            body["task_ids"] = task_ids
        else:
            body["filter"] = {k: v for k, v in (filters or {}).items() if v is not None}
        return self._call("POST", "/api/v1/system/failed-jobs/replay", body)

    def fair_share(self, user_id: int) -> dict[str, Any]:
        """A user's weight and running cap on each fair queue (admin)."""
        return self._call("GET", f"/api/v1/admin/users/{user_id}/fair-share")

    def set_fair_share(
        self, user_id: int, queue: str, *, weight: int = 1, max_running: int | None = None
    ) -> dict[str, Any]:
        """Set a user's weight and running cap on `queue` (admin); None: the queue's default."""
        body = {"queue": queue, "weight": weight, "max_running": max_running}
        return self._call("PUT", f"/api/v1/admin/users/{user_id}/fair-share", body)

    def reset_fair_share(self, user_id: int, queue: str) -> dict[str, Any]:
        """Give a user the defaults on `queue` again (admin)."""
        return self._call(
            "DELETE", f"/api/v1/admin/users/{user_id}/fair-share", params={"queue": queue}
        )

    def transactions(self, *, page: int = 1, limit: int = 50) -> dict[str, Any]:
        """The caller's ledger entries, newest first (`items`, `page`, `limit`, `total`)."""
        return self._call("GET", "/api/v1/transactions", params={"page": page, "limit": limit})

    # --- following a job ----------------------------------------------------------

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events from the start (or after `last_event_id`) until its terminal one.

        Reconnects with Last-Event-ID whenever the server closes early (the
        web process replays and closes; the events process stays open).
        Raises StreamUnavailable when this server has no event streams.
        """
        return self._follow(task_id, sse.StreamState(last_id=last_event_id), None)

    def _follow(
        self, task_id: str, state: sse.StreamState, deadline: float | None
    ) -> Iterator[Event]:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            # Keep-alives come every ~15 s: a stream silent for 45 s is dead.
            read_timeout = 45.0 if remaining is None else max(0.5, min(45.0, remaining))
            try:
                for event in self._stream_once(task_id, state, read_timeout):
                    yield event
                    if event.type == "state" and event.data.get("state") in TERMINAL:
                        return
            except httpx.ReadTimeout:
                pass  # a silent stream: connect again (or give up below)
            if state.ended:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(task_id, 0, None)
            pause = (state.retry_ms or 1000) / 1000
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            self._sleep(pause)

    def wait(
        self,
        task_id: str,
        timeout: float | None = None,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """The job's final status (SUCCESS, FAILURE or REVOKED), by its stream, else by polling.

        `on_update` sees every status document on the way (progress bars).
        Raises WaitTimeout after `timeout` seconds (None: wait for ever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, Any] | None = None
        if stream:
            try:
                for event in self._follow(task_id, sse.StreamState(), deadline):
                    if event.type not in ("state", "progress"):
                        continue
                    last = event.data
                    if on_update is not None:
                        on_update(last)
                    if last.get("state") in TERMINAL:
                        # The stream carries the document at that point; the
                        # status endpoint has the stored result in full.
                        return self.status(task_id)
                final = self.status(task_id)
                if final["state"] in TERMINAL:
                    return final
            except StreamUnavailable:
                pass
            except WaitTimeout:
                raise WaitTimeout(task_id, timeout or 0, last) from None
        return self._poll(task_id, deadline, timeout, on_update)

    def _poll(
        self,
        task_id: str,
        deadline: float | None,
        timeout: float | None,
        on_update: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        while True:
            status, hint = self._status(task_id)
            if on_update is not None:
                on_update(status)
            if status["state"] in TERMINAL:
                return status
            pause = hint if hint is not None else DEFAULT_POLL_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(task_id, timeout or 0, status)
                pause = min(pause, remaining)
            self._sleep(max(pause, 0.05))

    def _stream_once(
        self, task_id: str, state: sse.StreamState, read_timeout: float
    ) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream", **self._auth()}
        if state.last_id:
            headers["Last-Event-ID"] = state.last_id
        url = f"{self.events_url}/api/v1/tasks/{task_id}/events"
        timeout = httpx.Timeout(10.0, connect=CONNECT_TIMEOUT_SECONDS, read=read_timeout)
        try:
            with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
                if response.status_code == 204:
                    state.ended = True  # nothing after Last-Event-ID and the job is over
                    return
                if response.status_code in (404, 405):
                    response.read()
                    self.status(task_id)  # an unknown task raises its own 404 here
                    raise StreamUnavailable(f"no event stream at {url}")
                if response.status_code >= 400 or not response.headers.get(
                    "content-type", ""
                ).startswith("text/event-stream"):
                    response.read()
                    if response.status_code == 401:
                        raise _api_error(response)
                    raise StreamUnavailable(f"event stream answered {response.status_code}")
                for raw in sse.parse(response.iter_lines(), state):
                    try:
                        data = json.loads(raw.data)
                    except ValueError:
                        continue
                    yield Event(raw.id, raw.event, data)
        except httpx.ReadTimeout:
            raise
        except httpx.TransportError as exc:
            raise StreamUnavailable(f"event stream unreachable: {exc}") from exc

    # --- transport ----------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _status(self, task_id: str) -> tuple[dict[str, Any], float | None]:
        response = self._send("GET", f"/api/v1/tasks/{task_id}", retry_errors=True)
        return response.json(), _retry_after(response)

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_errors: bool | None = None,
    ) -> dict[str, Any]:
        response = self._send(
            method, path, body, params=params, headers=headers, retry_errors=retry_errors
        )
        return response.json()

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_errors: bool | None = None,
    ) -> httpx.Response:
        """One API call, retried after 429/503 (Retry-After) and, when safe, a lost connection.

        A connection that cannot be made is tried again for about 2 s
        (CONNECT_RETRY_DELAYS), then raises Unreachable naming the URL.
        """
        # GETs and DELETEs are safe to repeat; POSTs only with an Idempotency-Key.
        safe = retry_errors if retry_errors is not None else method in ("GET", "DELETE")
        attempt = 0
        connect_delays = iter(CONNECT_RETRY_DELAYS)
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    method,
                    f"{self.base_url}{path}",
                    json=body if body is not None else None,
                    params=params,
                    headers={**self._auth(), **(headers or {})},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                delay = next(connect_delays, None)
                if delay is None:
                    raise Unreachable(self.base_url, _connect_failure(exc)) from exc
                self._sleep(delay)
                continue
            except httpx.TransportError as exc:
                if not safe or attempt > self.max_retries:
                    raise ConveyorError(f"{method} {path}: {exc}") from exc
                self._sleep(min(2 ** (attempt - 1) * 0.5, 10.0))
                continue
            if response.status_code in RETRYABLE and attempt <= self.max_retries:
                wait = _retry_after(response)
                if wait is None or wait <= MAX_RETRY_AFTER_SECONDS:
                    self._sleep(wait if wait is not None else min(2 ** (attempt - 1), 10.0))
                    continue
            if response.status_code >= 400:
                raise _api_error(response)
            return response


def _connect_failure(exc: httpx.TransportError) -> str:
    """Why a connection could not be made, in a few words."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or type(exc).__name__


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200])

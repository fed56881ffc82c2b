"""A scenario's load over real HTTP: paced ledger submissions by several users, and polls."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Every request gets this long; slower counts as a hung request (gunicorn's own
# timeout is 30 s, and the API promises a prompt 503 when a dependency is down).
REQUEST_TIMEOUT = 10.0
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass(frozen=True)
class JobRequest:
    """One submission: which user posts which body to which route."""

    user: int
    path: str
    body: dict[str, Any]


def plan(count: int, users: int, seed: int) -> list[JobRequest]:
    """Mixed ledger jobs: 50% credits, 40% debits (some overdraw and fail), 10% random batches."""
    rng = random.Random(seed)
    jobs = []
    for index in range(count):
        user, roll = index % users, rng.random()
        if roll < 0.1:
            jobs.append(
                JobRequest(user, "/api/v1/transactions/random", {"count": rng.randint(1, 10)})
            )
        else:
            kind = "credit" if roll < 0.6 else "debit"
            body = {"type": kind, "amount": rng.randint(100, 5000), "description": f"chaos {index}"}
            jobs.append(JobRequest(user, "/api/v1/transactions", body))
    return jobs


class RequestFailed(Exception):
    """No HTTP answer: the request hung past REQUEST_TIMEOUT or the connection failed."""


class Http:
    """One keep-alive HTTP/1.1 connection to the web process."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.conn: http.client.HTTPConnection | None = None
        # The headers of the last answer (a 503's Retry-After is checked).
        self.last_headers: http.client.HTTPMessage | None = None

    def request(
        self, method: str, path: str, token: str, body: Any = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        """(status, decoded body). Retried once only when a kept-alive connection was closed
        before the request reached the server (POSTs carry an Idempotency-Key, so that is safe)."""
        all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        all_headers.update(headers or {})
        payload = None if body is None else json.dumps(body)
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=REQUEST_TIMEOUT
                )
            try:
                self.conn.request(method, path, body=payload, headers=all_headers)
                response = self.conn.getresponse()
                data = response.read()
                self.last_headers = response.headers
            except TimeoutError as exc:
                self.close()
                raise RequestFailed(
                    f"{method} {path}: no answer within {REQUEST_TIMEOUT:.0f} s"
                ) from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and not attempt:
                    continue
                raise RequestFailed(f"{method} {path}: {exc.__class__.__name__}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise RequestFailed(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
            try:
                return response.status, json.loads(data) if data else None
            except ValueError:
                return response.status, {"raw": data[:200].decode(errors="replace")}
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Load:
    """Submitters (paced at `rate` jobs/s) and pollers against one web process."""

    base_url: str
    tokens: list[str]
    jobs: list[JobRequest]
    rate: float
    # 503s that name one of these dependencies are expected during this scenario's fault.
    allowed_503: frozenset[str] = frozenset()
    submitters: int = 6
    pollers: int = 2
    accepted: dict[str, JobRequest] = field(default_factory=dict)
    answers: Counter = field(default_factory=Counter)
    # When (epoch seconds) each submission was refused with a 503.
    refused_at: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    polls: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._done = 0
        self._ids: list[str] = []
        self._stop_polling = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    # -- control ----------------------------------------------------------------

    def start(self) -> None:
        self._started = time.monotonic()
        for n in range(self.submitters):
            self._spawn(self._submit_loop, f"submit-{n}")
        for n in range(self.pollers):
            self._spawn(self._poll_loop, f"poll-{n}")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def accepted_ids(self) -> list[str]:
        """The task ids of the submissions answered 202 so far."""
        with self._lock:
            return list(self.accepted)

    @property
    def submitted(self) -> int:
        """Submissions answered (or failed) so far."""
        return self._done

    def wait_submitted(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._done < min(count, len(self.jobs)):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {self._done} of {count} submissions within {timeout:.0f} s"
                )
            time.sleep(0.05)

    def finish(self, timeout: float) -> None:
        """Wait for every submission, then stop the pollers."""
        self.wait_submitted(len(self.jobs), timeout)
        self._stop_polling.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)

    # -- submitters and pollers --------------------------------------------------

    def _submit_loop(self) -> None:
        http_ = Http(self.base_url)
        while True:
            with self._lock:
                index = self._next
                if index >= len(self.jobs):
                    break
                self._next += 1
            delay = self._started + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self._submit(http_, index, self.jobs[index])
            finally:
                with self._lock:
                    self._done += 1
        http_.close()

    def _submit(self, http_: Http, index: int, job: JobRequest) -> None:
        key = f"chaos-{index}-{uuid.uuid4().hex}"
        try:
            status, body = http_.request(
                "POST", job.path, self.tokens[job.user], job.body, {"Idempotency-Key": key}
            )
        except RequestFailed as exc:
            self._violation(f"submit {index}: {exc}")
            return
        label = self._classify("submit", status, body, expected=202)
        if status == 503:
            with self._lock:
                self.refused_at.append(time.time())
            if not (http_.last_headers and http_.last_headers.get("Retry-After")):
                self._violation(f"submit {index} answered 503 without Retry-After: {body}")
        if status == 202:
            with self._lock:
                self.accepted[body["task_id"]] = job
                self._ids.append(body["task_id"])
        self._count(label)

    def _poll_loop(self) -> None:
        http_ = Http(self.base_url)
        rng = random.Random()
        while not self._stop_polling.wait(0.03):
            with self._lock:
                if not self._ids:
                    continue
                task_id = rng.choice(self._ids)
                job = self.accepted[task_id]
            try:
                status, body = http_.request(
                    "GET", f"/api/v1/tasks/{task_id}", self.tokens[job.user]
                )
            except RequestFailed as exc:
                self._violation(f"poll: {exc}")
                continue
            if status == 200 and (body or {}).get("task_id") != task_id:
                self._violation(f"poll of {task_id} answered another document: {body}")
            self._count(self._classify("poll", status, body, expected=200))
            with self._lock:
                self.polls += 1
        http_.close()

    def _classify(self, what: str, status: int, body: Any, *, expected: int) -> str:
        """A label for the answer; anything but `expected` or an allowed 503 is a violation."""
        if status == expected:
            return f"{what} {status}"
        if status == 503:
            dependency = ((body or {}).get("error") or {}).get("details") or {}
            dependency = dependency.get("dependency") if isinstance(dependency, dict) else None
            if dependency in self.allowed_503:
                return f"{what} 503 {dependency}"
            self._violation(f"{what} answered 503 naming {dependency!r}: {body}")
            return f"{what} 503 {dependency}"
        self._violation(f"{what} answered {status}: {body}")
        return f"{what} {status}"

    def _count(self, label: str) -> None:
        with self._lock:
            self.answers[label] += 1

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    # -- figures -----------------------------------------------------------------

    def refused(self) -> int:
        """Submissions answered 503 (a dependency was down)."""
        return sum(n for label, n in self.answers.items() if label.startswith("submit 503"))

    def poll_503s(self) -> int:
        return sum(n for label, n in self.answers.items() if label.startswith("poll 503"))


def fund_users(base_url: str, tokens: list[str], amount: int) -> dict[str, JobRequest]:
    """One credit per user, so every wallet starts above zero; task id -> request."""
    http_ = Http(base_url)
    accepted = {}
    try:
        for user, token in enumerate(tokens):
            body = {"type": "credit", "amount": amount, "description": "chaos funding"}
            status, answer = http_.request("POST", "/api/v1/transactions", token, body)
            if status != 202:
                raise RuntimeError(f"funding answered {status}: {answer}")
            accepted[answer["task_id"]] = JobRequest(user, "/api/v1/transactions", body)
    finally:
        http_.close()
    return accepted

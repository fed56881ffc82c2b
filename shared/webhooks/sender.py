"""One webhook attempt over HTTP: re-check the target, connect to the approved address, sign.

Redirects are never followed (a 3xx is a failed attempt: following it would
let a receiver point Conveyor anywhere), the timeout is short, and the answer's
body is not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from shared.webhooks import signing as webhooks_signing
from shared.webhooks.urls import ApprovedTarget, Resolver, UnsafeWebhookUrl, check_url, resolve

USER_AGENT = "Conveyor-Webhooks/1.0"


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: a status code, or an error, and how long it took."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def http_client(
    timeout_seconds: float, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """A client for deliveries: no redirects, no proxies from the environment, short timeouts."""
    return httpx.Client(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_seconds),
        transport=transport,
        headers={"User-Agent": USER_AGENT},
    )


def send(
    client: httpx.Client,
    *,
    url: str,
    secret: str,
    msg_id: str,
    body: str,
    allow_private: bool,
    resolver: Resolver = resolve,
) -> AttemptResult:
    """POST `body` to `url`, signed for `msg_id`, after checking where the URL now points."""
    started = time.monotonic()
    try:
        target = check_url(url, allow_private=allow_private, resolver=resolver)
    except UnsafeWebhookUrl as exc:
        return AttemptResult(None, f"refused: {exc.reason}"[:255], 0)
    timestamp = int(time.time())
    request = _pinned_request(client, target, body)
    request.headers.update(webhooks_signing.headers(secret, msg_id, timestamp, body))
    try:
        # Streamed and closed unread: a receiver cannot make us download its body.
        response = client.send(request, stream=True)
        response.close()
    except httpx.TimeoutException:
        return AttemptResult(None, "timed out", _elapsed_ms(started))
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {exc}"[:255], _elapsed_ms(started))
    error = None
    if response.is_redirect:
        error = f"redirect to {response.headers.get('location', '?')!r} not followed"[:255]
    elif not 200 <= response.status_code < 300:
        error = f"HTTP {response.status_code}"
    return AttemptResult(response.status_code, error, _elapsed_ms(started))


def _pinned_request(client: httpx.Client, target: ApprovedTarget, body: str) -> httpx.Request:
    # Connect to the address just approved, not to whatever a second lookup
    # returns; the Host header and TLS (SNI and certificate) keep the name.
    url = httpx.URL(target.url)
    pinned = url.copy_with(host=str(target.addresses[0]))
    request = client.build_request(
        "POST",
        pinned,
        content=body.encode(),
        headers={"Content-Type": "application/json", "Host": _host_header(url)},
    )
    if target.scheme == "https":
        request.extensions["sni_hostname"] = target.host
    return request


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

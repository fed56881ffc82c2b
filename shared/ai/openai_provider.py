"""`OpenAIProvider`: one attempt per call against an OpenAI-compatible HTTP API.

Text and presentations go to `POST {base_url}/chat/completions` (presentations
with `response_format: {"type": "json_object"}` and a strict shape check);
images go to `POST {base_url}/images/generations`. Every failure becomes an
`AIError` (see `shared.ai.errors` for the codes). Retrying is the caller's
decision: use `error.retryable` and `retry_delay(attempt, base, error.retry_after)`.

Build one instance per process (after any fork) and reuse it: it keeps its
connections alive between calls (an httpx.Client, or the plain keep-alive
connections a worker hands it as `plain_http`, tuning/ai_plain_http.py).
Tests inject `transport=` (e.g. `httpx.MockTransport`) or point `base_url` at
a loopback server; nothing is patched.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from infra import tracing
from shared.ai.errors import AIError, redact
from shared.ai.outline import outline_messages, parse_outline
from shared.ai.request import AIRequest
from shared.ai.retry import parse_retry_after

# Errors of one exchange on plain connections: a TimeoutError is a timeout, the
# rest an unreachable upstream (TimeoutError is an OSError: test it first).
TransportErrors = (OSError, http.client.HTTPException)


class PlainConnections(Protocol):
    """Keep-alive connections to one origin that POST and answer httpx.Response objects."""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response: ...

    def close(self) -> None: ...


# Makes PlainConnections for (base URL, timeout, TLS context or None).
PlainHttp = Callable[[str, float, ssl.SSLContext | None], PlainConnections]


if TYPE_CHECKING:
    from shared.ai.provider import ProgressCallback

_TEXT_INSTRUCTIONS = {
    "summarize": "Summarize the user's text concisely, keeping the key facts.",
    "expand": "Expand the user's text with relevant detail and examples.",
    "rewrite": "Rewrite the user's text to be clearer while keeping its meaning.",
    "explain": "Explain the user's text in plain language for a non-expert.",
}
_DETAIL_MAX_CHARS = 200


def _bad(message: str) -> AIError:
    return AIError("ai_bad_response", message)


def _first(items: Any, what: str) -> dict[str, Any]:
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise _bad(f"upstream response has no {what}")
    return items[0]


class OpenAIProvider:
    """A `Provider` for OpenAI's API or any server that speaks its JSON."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        image_model: str,
        timeout: float,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 100,
        plain_http: PlainHttp | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.image_model = image_model
        self.timeout = timeout
        self._api_key = api_key
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._owns_client = client is None
        self._client = client
        self._connections: PlainConnections | None = None
        plain = plain_http is not None and transport is None and not urllib.request.getproxies()
        if client is None and not plain:
            # httpx carries every call, one pool of max_connections (also
            # when a test injects a transport or the environment sets a proxy,
            # which the plain connections would not honour).
            self._client = httpx.Client(
                transport=transport,
                timeout=timeout,
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
            )
        elif client is None and plain_http is not None:
            # Plain keep-alive connections, one per call at a time, with the
            # TLS context httpx would build (tuning/ai_plain_http.py).
            https = self.base_url.startswith("https:")
            self._connections = plain_http(
                self.base_url, timeout, httpx.create_ssl_context() if https else None
            )

    def __repr__(self) -> str:  # never print the key
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (only for a client this instance created)."""
        if not self._owns_client:
            return
        if self._client is not None:
            self._client.close()
        if self._connections is not None:
            self._connections.close()

    def model_for(self, kind: str) -> str:
        """The model that serves `kind`: the image model for images, else the chat model."""
        return self.image_model if kind == "image" else self.model

    def generate(self, request: AIRequest, progress: ProgressCallback | None = None) -> dict:
        """One upstream attempt for `request`; see `Provider.generate`."""
        report = progress or (lambda percent, message: None)
        if request.kind == "text":
            return self._text(request, report)
        if request.kind == "presentation":
            return self._presentation(request, report)
        return self._image(request, report)

    def _text(self, request: AIRequest, report: ProgressCallback) -> dict[str, Any]:
        instruction = _TEXT_INSTRUCTIONS[request.options["operation"]]
        report(10, "Asking the model")
        body = self._post(
            "/chat/completions",
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": instruction},
                    {"role": "user", "content": request.prompt},
                ],
                "max_tokens": request.options["max_tokens"],
            },
        )
        text = self._content(body).strip()
        report(90, "The model answered")
        return {"text": text}

    def _presentation(self, request: AIRequest, report: ProgressCallback) -> dict[str, Any]:
        num_cards = request.options["num_cards"]
        report(10, "Asking the model for an outline")
        body = self._post(
            "/chat/completions",
            {
                "model": self.model,
                "messages": outline_messages(request),
                "response_format": {"type": "json_object"},
                # Room for a title plus ~5 short bullets per card, within one reply.
                "max_tokens": min(4096, 256 + 128 * num_cards),
            },
        )
        report(50, "Checking the outline")
        return parse_outline(self._content(body), num_cards, report)

    def _image(self, request: AIRequest, report: ProgressCallback) -> dict[str, Any]:
        report(10, "Asking the image model")
        body = self._post(
            "/images/generations",
            {
                "model": self.image_model,
                "prompt": request.prompt,
                "n": 1,
                "size": request.options["size"],
            },
        )
        image = _first(body.get("data"), "image")
        url, b64 = image.get("url"), image.get("b64_json")
        report(90, "The image is ready")
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            return {"url": url}
        if isinstance(b64, str) and b64:
            return {"url": f"data:image/png;base64,{b64}"}
        raise _bad("upstream image has neither an http(s) url nor b64_json")

    def _content(self, body: dict[str, Any]) -> str:
        choice = _first(body.get("choices"), "choices")
        if choice.get("finish_reason") == "content_filter":
            raise AIError("ai_rejected", "the upstream's content filter refused the prompt")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise _bad("upstream response has no message content")
        return content

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        if self._connections is not None and tracing.ACTIVE:
            return self._traced_post(path, body)
        return self._exchange(path, body, self._headers)

    def _traced_post(self, path: str, body: bytes) -> dict[str, Any]:
        """`_exchange` in a client span (httpx's instrumentation covers the httpx path)."""
        attributes = {"http.request.method": "POST", "url.full": self.base_url + path}
        with tracing.span(f"POST {path}", kind="client", attributes=attributes) as span:
            # The upstream may trace too: it continues ours.
            response = self._exchange(path, body, tracing.inject(dict(self._headers)))
            if span is not None:  # None inside an unsampled trace
                span.set_attribute("gen_ai.request.model", self.model)
            return response

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        try:
            if self._connections is not None:
                response = self._connections.post(path, body, headers)
            else:
                assert self._client is not None
                response = self._client.post(
                    self.base_url + path, content=body, headers=headers, timeout=self.timeout
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise AIError(
                "ai_timeout", f"upstream did not answer within {self.timeout:g}s"
            ) from exc
        except (httpx.TransportError, *TransportErrors) as exc:
            raise AIError(
                "ai_unavailable", f"could not reach the upstream ({type(exc).__name__})"
            ) from exc
        self._raise_for_status(response)
        try:
            body = response.json()
        except ValueError:
            raise _bad("upstream sent invalid JSON") from None
        if not isinstance(body, dict):
            raise _bad("upstream response is not a JSON object")
        return body

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        code, detail = self._upstream_error(response)
        if status == 429 and code == "insufficient_quota":
            # OpenAI's billing quota: waiting minutes will not help, so don't retry.
            raise AIError("ai_rejected", f"upstream account quota is exhausted{detail}")
        if status == 429:
            raise AIError(
                "ai_rate_limited",
                f"upstream rate limit reached{detail}",
                retry_after=parse_retry_after(response.headers),
            )
        if status == 408:
            raise AIError("ai_timeout", f"upstream timed out the request{detail}")
        if status >= 500:
            raise AIError(
                "ai_unavailable",
                f"upstream failed with HTTP {status}{detail}",
                retry_after=parse_retry_after(response.headers),
            )
        if status >= 400:
            raise AIError("ai_rejected", f"upstream refused the request with HTTP {status}{detail}")
        raise _bad(f"upstream answered HTTP {status}")

    def _upstream_error(self, response: httpx.Response) -> tuple[str | None, str]:
        """The upstream's error code and a short, redacted `: message` suffix."""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            return None, ""  # an HTML error page or similar: not worth echoing
        if not isinstance(error, dict):
            return None, ""
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message")
        if not isinstance(message, str) or not message.strip():
            return code, ""
        # Upstreams echo (parts of) keys in 401 messages; redact before truncating
        # so a cut cannot leave a fragment the redaction would miss.
        message = redact(" ".join(message.split()), [self._api_key])
        return code, ": " + message[:_DETAIL_MAX_CHARS]

"""The `Provider` interface, its two implementations and `build_provider(settings)`.

A provider turns one `AIRequest` into a result dict, in ONE attempt:

- text → `{"text": str}`
- presentation → `{"title": str, "cards": [{"title": str, "bullets": [str, ...]}]}`
- image → `{"url": str}` (https URL or `data:` URL)

The caller adds `provider`, `model` (from `provider.model_for(kind)`) and
`from_cache`; `shared.ai.generation.generate` does that, with the cache. A
provider may call `progress(percent, message)` with percent below 100; the
caller reports 100 when the job is done. Failures raise `AIError`; whether and
when to retry is the caller's choice (`error.retryable`, `retry_delay`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import httpx

from shared.ai.offline import OfflineProvider
from shared.ai.openai_provider import OpenAIProvider
from shared.ai.retry import retry_delay

if TYPE_CHECKING:
    from shared.ai.request import AIRequest
    from shared.settings import Settings

__all__ = [
    "OfflineProvider",
    "OpenAIProvider",
    "ProgressCallback",
    "Provider",
    "build_provider",
    "retry_delay",
]

ProgressCallback = Callable[[int, str], None]


@runtime_checkable
class Provider(Protocol):
    """Anything that can serve an `AIRequest`; see the module docstring for results."""

    name: str
    model: str

    def model_for(self, kind: str) -> str:
        """The model name that serves `kind` (cache keys and results carry it)."""
        ...

    def generate(self, request: AIRequest, progress: ProgressCallback | None = None) -> dict:
        """One attempt at `request`; raises `AIError` on failure."""
        ...

    def close(self) -> None:
        """Release any pooled resources."""
        ...


def build_provider(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> Provider:
    """The provider `settings.resolved_ai_provider` names, configured from settings."""
    if settings.resolved_ai_provider == "openai":
        return OpenAIProvider(
            base_url=settings.ai_base_url,
            api_key=settings.ai_api_key,
            model=settings.ai_model,
            image_model=settings.ai_image_model,
            timeout=settings.ai_timeout_seconds,
            transport=transport,
            # A gevent AI worker runs this many tasks at once; let each have a socket.
            max_connections=settings.ai_worker_concurrency,
        )
    return OfflineProvider()

"""The two providers, and `build_provider(settings)` choosing one (see shared/ai/provider.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from shared.ai.offline import OfflineProvider
from shared.ai.openai_provider import OpenAIProvider, PlainHttp
from shared.ai.provider import ProgressCallback, Provider
from shared.ai.retry import retry_delay

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "OfflineProvider",
    "OpenAIProvider",
    "ProgressCallback",
    "Provider",
    "build_provider",
    "retry_delay",
]


def build_provider(
    settings: Settings,
    *,
    transport: httpx.BaseTransport | None = None,
    plain_http: PlainHttp | None = None,
) -> Provider:
    """The provider `settings.resolved_ai_provider` names, configured from settings.

    `plain_http`: the OpenAI provider's calls go on these connections instead of
    httpx (the worker passes tuning/ai_plain_http.py's when it is on).
    """
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
            plain_http=plain_http,
        )
    return OfflineProvider()

"""`generate`: one AI job's domain work — cache, quota, provider — minus retries.

A Celery task (the caller) wires it up roughly like this:

    request = AIRequest.from_dict(payload)              # AIRequestError → fail, no retry
    try:
        result = generate(
            request, provider, cache,
            before_upstream=lambda: quota.consume(
                redis, settings.redis_key_prefix, user_id, settings.ai_daily_call_limit
            ),
            progress=report_progress,                    # (percent < 100, message)
        )
    except AIError as error:
        if error.retryable and task.request.retries < settings.ai_max_retries:
            raise task.retry(countdown=retry_delay(
                task.request.retries, settings.ai_retry_backoff_seconds, error.retry_after))
        ...                                              # record error.to_dict() as FAILURE

`provider` comes from `build_provider(settings)` and `cache` from
`AICache.from_settings(redis, settings)`, both built once per worker process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.ai.cache import AICache, Also
from shared.ai.provider import ProgressCallback, Provider
from shared.ai.request import AIRequest


def generate(
    request: AIRequest,
    provider: Provider,
    cache: AICache,
    *,
    before_upstream: Callable[[], None] | None = None,
    progress: ProgressCallback | None = None,
    with_lookup: Also | None = None,
) -> dict[str, Any]:
    """The result for `request` with `provider`, `model` and `from_cache` added.

    On a cache miss (and only then) `before_upstream` runs right before the
    provider is called, which is where the daily quota is consumed.
    `with_lookup(pipe)` queues the caller's writes on the cache lookup's
    trip (see AICache.get_or_compute).
    """
    model = provider.model_for(request.kind)

    def compute() -> dict:
        if before_upstream is not None:
            before_upstream()
        return provider.generate(request, progress)

    result, from_cache = cache.get_or_compute(
        request, provider.name, model, compute, also=with_lookup
    )
    return {**result, "provider": provider.name, "model": model, "from_cache": from_cache}

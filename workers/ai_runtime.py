"""Per-process AI provider and result cache for the `ai.*` tasks, rebuilt after a fork.

One provider per process means one set of kept-alive upstream connections
(tuning/ai_plain_http.py when it is on, else httpx): the up to AI_WORKER_CONCURRENCY greenlets of a
gevent worker take them in turn, one call per connection at a time.
"""

from __future__ import annotations

import threading

from celery import Celery
from celery.signals import worker_process_init

import tuning
from shared.ai.cache import AICache
from shared.ai.providers import Provider, build_provider
from workers.runtime import resources

_lock = threading.Lock()  # cooperative under gevent's monkey-patching
_provider: Provider | None = None
_cache: AICache | None = None


def provider(app: Celery) -> Provider:
    """This process's provider, built from the app's settings on first use."""
    global _provider
    with _lock:
        if _provider is None:
            settings = app.conf.conveyor_settings
            plain_http = None
            if tuning.enabled(settings, "ai_plain_http"):
                from tuning.ai_plain_http import KeepAliveConnections as plain_http

                tuning.applied("ai_plain_http")
            _provider = build_provider(settings, plain_http=plain_http)
        return _provider


def cache(app: Celery) -> AICache:
    """This process's AI result cache, on the process's Redis client."""
    global _cache
    client = resources(app).redis
    with _lock:
        # Rebuilt when workers.runtime rebuilt the Redis client underneath it.
        if _cache is None or _cache.redis is not client:
            _cache = AICache.from_settings(client, app.conf.conveyor_settings)
        return _cache


def reset() -> None:
    """Close and forget the provider and cache (tests that change settings)."""
    global _provider, _cache
    with _lock:
        if _provider is not None:
            _provider.close()
        _provider = None
        _cache = None


def _after_fork(**_kwargs: object) -> None:
    # The parent's pooled sockets must not be shared; drop, don't close, them.
    global _provider, _cache
    _provider = None
    _cache = None


def install() -> None:
    """Forget the parent's provider in every prefork child (connected once per process)."""
    worker_process_init.connect(_after_fork, weak=False, dispatch_uid="conveyor.ai_runtime.fork")

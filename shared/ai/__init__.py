"""AI generation domain: requests, providers, cache, quota (no Flask, no Celery).

- `request`: `AIRequest` (normalised, validated) and `AIRequestError`.
- `errors`: `AIError` with stable codes and retry hints.
- `providers`: the `Provider` protocol, `OfflineProvider`, `OpenAIProvider`,
  `build_provider(settings)` and `retry_delay`.
- `cache`: `AICache`, the Redis result cache with single-flight.
- `quota`: the per-user daily upstream-call quota.
- `generation`: `generate`, which puts the above together for one job.
"""

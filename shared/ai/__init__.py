"""AI generation domain: requests, providers, cache, quota (no Flask, no Celery).

- `request`: `AIRequest` (normalised, validated) and `AIRequestError`.
- `errors`: `AIError` with stable codes and retry hints.
- `provider`: the `Provider` protocol; `providers`: `OfflineProvider`, `OpenAIProvider`,
  `build_provider(settings)` and `retry_delay`.
- `cache`: `AICache`, the Redis result cache with single-flight.
- `quota`: the per-user daily upstream-call quota.
- `generation`: `generate`, which puts the above together for one job.
"""

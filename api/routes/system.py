"""Admin views of the running system: cache statistics and slow SQL."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from api.errors import ApiError
from api.extensions import resources
from api.openapi import documented
from api.security import require_admin
from infra.slow_queries import SlowQueryLog

bp = Blueprint("system", __name__, url_prefix="/api/v1/system")

# The AI result cache keeps its own keys (shared.ai.cache); count them here too.
AI_KEY_PATTERN = "ai:v1:*"


class CacheNamespaceStats(BaseModel):
    hits: int
    misses: int
    hit_rate: float | None
    keys: int


class CacheStats(BaseModel):
    """Counters shared by every web and worker process; keys counted live."""

    namespaces: dict[str, CacheNamespaceStats]
    totals: CacheNamespaceStats


@bp.get("/cache-stats")
@require_admin
@documented("Cache hits, misses and keys per namespace", auth="admin", responses={200: CacheStats})
def cache_stats() -> Response:
    """Hits, misses, hit rate and live keys per cache namespace, across all processes."""
    try:
        namespaces = resources().cache.stats({"ai": AI_KEY_PATTERN})
    except redis.RedisError:
        raise ApiError(503, "dependency_unavailable", "redis unavailable") from None
    hits = sum(stats["hits"] for stats in namespaces.values())
    misses = sum(stats["misses"] for stats in namespaces.values())
    totals = {
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "keys": sum(stats["keys"] for stats in namespaces.values()),
    }
    return jsonify({"namespaces": namespaces, "totals": totals})


class SlowQuery(BaseModel):
    fingerprint: str
    statement: str | None
    count: int
    total_ms: float
    mean_ms: float | None
    max_ms: float


class SlowQueries(BaseModel):
    """Statements slower than SLOW_QUERY_MS, grouped by shape, worst total first."""

    threshold_ms: float
    items: list[SlowQuery]


class SlowQueriesReset(BaseModel):
    cleared: int


def _slow_log() -> SlowQueryLog:
    res = resources()
    return SlowQueryLog(res.redis, res.keys)


@bp.get("/slow-queries")
@require_admin
@documented("Slow SQL statements by fingerprint", auth="admin", responses={200: SlowQueries})
def slow_queries() -> Response:
    """Every recorded slow statement shape with its count, total and max time."""
    try:
        items = _slow_log().top()
    except redis.RedisError:
        raise ApiError(503, "dependency_unavailable", "redis unavailable") from None
    return jsonify({"threshold_ms": resources().settings.slow_query_ms, "items": items})


@bp.post("/slow-queries/reset")
@require_admin
@documented("Forget recorded slow SQL", auth="admin", responses={200: SlowQueriesReset})
def reset_slow_queries() -> Response:
    """Start a fresh measurement window."""
    try:
        cleared = _slow_log().reset()
    except redis.RedisError:
        raise ApiError(503, "dependency_unavailable", "redis unavailable") from None
    return jsonify({"cleared": cleared})

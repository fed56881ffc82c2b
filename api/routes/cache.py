"""Cache warming on demand (admin): a `cache.warm` job with progress and a status."""

from __future__ import annotations

from flask import Blueprint, Response

from api.dispatch import submit
from api.openapi import documented
from api.requests import parse_body
from api.responses import JobAccepted
from api.schemas import CacheWarmRequest
from api.security import require_admin
from shared.caches.warming import TARGETS

bp = Blueprint("cache", __name__, url_prefix="/api/v1")


@bp.post("/cache/warm")
@require_admin
@documented(
    "Queue cache warming (job cache.warm): balances, transactions, ai",
    auth="admin",
    body=CacheWarmRequest,
    body_optional=True,
    responses={202: JobAccepted},
)
def warm_cache() -> Response:
    body = parse_body(CacheWarmRequest, optional=True)
    targets = [target for target in TARGETS if target in set(body.targets or TARGETS)]
    return submit("cache.warm", {"targets": targets}, body.model_dump())

"""Liveness and readiness probes (never rate limited, never authenticated)."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.extensions import resources
from api.limits import unlimited
from api.openapi import documented
from api.responses import Health, Readiness

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@unlimited
@documented("Liveness: the process answers", auth="none", responses={200: Health})
def healthz() -> Response:
    """The process is alive; touches no dependency."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@unlimited
@documented(
    "Readiness: Redis and the database answer",
    auth="none",
    responses={200: Readiness, 503: Readiness},
)
def readyz() -> tuple[Response, int]:
    """200 when Redis and the database answer; 503 naming the one that does not."""
    res = resources()
    checks = {"database": _check(lambda: _ping_database(res)), "redis": _check(res.redis.ping)}
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if not ready:
        body["error"] = {
            "code": "dependency_unavailable",
            "message": ", ".join(name for name, c in checks.items() if not c["ok"])
            + " unavailable",
            "details": {"failed": [name for name, c in checks.items() if not c["ok"]]},
        }
    return jsonify(body), 200 if ready else 503


def _ping_database(res) -> None:
    with res.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check(probe) -> dict:
    started = time.perf_counter()
    try:
        probe()
        ok, error = True, None
    except Exception as exc:  # any failure means "not ready", never a 500
        ok, error = False, exc.__class__.__name__
    result = {"ok": ok, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    if error:
        result["error"] = error
    return result

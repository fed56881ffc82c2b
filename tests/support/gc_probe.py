"""A WSGI app that answers with its process's collector settings (tests/ops/test_gc_tuning.py)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """GET anything: {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}."""
    body = json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]

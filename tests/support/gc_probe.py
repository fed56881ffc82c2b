"""A WSGI app that answers with its process id and collector settings (tests/ops/)."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterable


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """GET anything: the process id, gc.get_threshold() and gc.get_freeze_count() as JSON."""
    state = {"pid": os.getpid(), "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
    body = json.dumps(state).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]

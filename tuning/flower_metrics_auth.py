"""Repair: Flower's `/metrics` asks for the same login as the rest of Flower.

Changes: `flower.views.monitor.Metrics.get` is wrapped in tornado's
`web.authenticated`, as every other Flower page and API handler is: with
FLOWER_BASIC_AUTH set, a scrape without those credentials is a 401 (OAuth:
a redirect to the login page). Prometheus may instead send the scrape token
it sends the API (`Authorization: Bearer <METRICS_TOKEN>`), which opens
/metrics only, never Flower's pages or its control API. `/healthcheck`
stays open for probes.

Why: Flower 2.2.0 serves `/metrics` (worker names, task names and counts,
queue wait times) to anyone who can reach its port, whatever `--basic-auth`
says: its handler is the one that never asks for the current user. Compose
publishes Flower's port on the host, so its metrics were public.

Installed where Flower runs: `celery -A workers.app flower` loads the app's
entry point (workers/app.py, `wire_process`), which installs it in every
Celery command process that has Flower's command loaded (a worker never
serves the handler; patching its class there changes nothing).

Written against: flower 2.2.0 (`flower.views.monitor.Metrics`,
`BaseHandler.get_current_user`), tornado 6.6.1 (`web.authenticated`).
Breaks: tests/ops/test_flower_auth.py (`/metrics` refused without the login,
served with it or the scrape token, which opens nothing else).
Off: `CONVEYOR_TUNING=-flower_metrics_auth` (a repair: `off` keeps it).
"""

from __future__ import annotations

import hmac
import sys
from typing import Any

_ORIGINAL = "_conveyor_original"


def flower_loaded() -> bool:
    """Whether Flower's views are loaded here (every `celery` command, Flower installed)."""
    return "flower.views.monitor" in sys.modules


def install(metrics_token: str = "") -> bool:
    """Put Flower's /metrics behind its login or `metrics_token` (once); False if done."""
    from flower.views import monitor
    from tornado import web

    handler = monitor.Metrics
    current = handler.get
    if getattr(current, _ORIGINAL, None) is not None:
        return False
    logged_in = web.authenticated(current)

    def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        if scraper(self.request.headers.get("Authorization", ""), metrics_token):
            return current(self, *args, **kwargs)
        return logged_in(self, *args, **kwargs)

    setattr(get, _ORIGINAL, current)
    handler.get = get
    return True


def scraper(authorization: str, metrics_token: str) -> bool:
    """Whether `authorization` is `Bearer <METRICS_TOKEN>` (never when no token is set)."""
    scheme, _, supplied = authorization.partition(" ")
    if not metrics_token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), metrics_token.encode())


def uninstall() -> None:
    """Flower's own handler again (tests)."""
    from flower.views import monitor

    original = getattr(monitor.Metrics.get, _ORIGINAL, None)
    if original is not None:
        monitor.Metrics.get = original

"""The `events` process: a small Flask app that holds event streams open, built from Settings.

It runs under gunicorn's gevent worker (one process, thousands of greenlets;
Procfile `events`), so a stream costs a greenlet, not a request thread. One
`EventHub` per process reads Redis once for all of its streams. It serves the
stream routes, the ticket route and the health probes; everything else stays
on `web`.
"""

from __future__ import annotations

import dataclasses

from flask import Flask

from api import _finish_request, _start_request, observability
from api import tracing as api_tracing
from api.errors import register_error_handlers
from api.hardening import init_hardening
from api.limits import init_rate_limits
from api.stream_auth import init_stream_tickets
from infra.redis_store import create_redis
from infra.settings import Settings
from shared.jobs import StatusStore
from shared.jobs.events import EventHub, StreamKeys
from shared.jobs.kinds import QUEUES
from shared.resources import Resources

# Concurrent Redis calls of the stream views; past it a greenlet waits for a
# connection instead of failing (redis-py's default pool raises when full).
REDIS_CONNECTIONS = 64
# The hub's XREAD BLOCK: how long one read waits for new events.
HUB_BLOCK_MS = 2000


def create_events_app(settings: Settings | None = None) -> Flask:
    """Build the events app for `settings` (default: read from the environment once)."""
    from api.routes import events, ops

    settings = settings or Settings.from_env()
    settings.validate()
    api_tracing.start(settings, "events")
    app = Flask(__name__)
    app.json.sort_keys = False
    res = Resources.build(settings)
    client = create_redis(settings, max_connections=REDIS_CONNECTIONS, wait_for_connection=10)
    res.redis.close()
    res = dataclasses.replace(res, redis=client, statuses=StatusStore(client, res.keys))
    app.extensions["conveyor"] = res
    # Its own connection: the blocking read must not hold one of the views'.
    reader = create_redis(settings, max_connections=None, socket_timeout=HUB_BLOCK_MS / 1000 + 5)
    app.extensions["conveyor.event_hub"] = EventHub(
        reader, StreamKeys(settings.redis_key_prefix), block_ms=HUB_BLOCK_MS
    )
    register_error_handlers(app)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    observability.init_app(app, res, list(QUEUES))
    app.register_blueprint(events.bp)
    app.register_blueprint(ops.bp)
    init_stream_tickets(app)
    init_hardening(app, settings)
    init_rate_limits(app, settings)
    api_tracing.instrument(app)
    return app

"""gevent processes: whether this one is monkey-patched, and psycopg2 made to wait cooperatively.

psycopg2 talks to PostgreSQL in C, below gevent's patched sockets: without a
wait callback a query blocks the OS thread, i.e. every greenlet in the
process. psycogreen installs one through psycopg2's own extension point
(`psycopg2.extensions.set_wait_callback`), so this is configuration, not an
adjustment. Every gevent process calls it: the gevent `web` and `events`
workers (gunicorn.conf.py) and `worker_ai` (workers/factory.py).
"""

from __future__ import annotations

import sys


def is_patched() -> bool:
    """Whether gevent has monkey-patched this process's sockets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def cooperative_psycopg() -> bool:
    """Route psycopg2's socket waits through gevent in a patched process; True when it did."""
    if not is_patched():
        return False
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    return True

"""Making psycopg2 cooperative when the worker runs the gevent pool (`worker_ai`)."""

from __future__ import annotations

import sys


def patch_psycopg_for_gevent() -> bool:
    """Route psycopg2's socket waits through gevent when gevent has patched sockets.

    `celery worker -P gevent` monkey-patches before it imports the app, so this
    runs at `workers.app` import. Without it a query blocks the OS thread, i.e.
    every greenlet in the process. True when the patch was applied.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return False
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    return True

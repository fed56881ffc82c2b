"""gunicorn's logger without its access line, which gunicorn.conf.py's logging config would build.

Changes: `gunicorn.glogging.Logger._compute_access_log_enabled` answers False
and `access` does nothing, in a subclass named by gunicorn.conf.py's
`logger_class`.

Why: any `logconfig_dict` turns gunicorn's access logging on; it then
formats every request's atoms (a tenth of a /healthz's CPU in `make bench`'s
profile) only for the `discard` handler to drop them. The app writes one
richer JSON access line itself (conveyor.access).

Written against: gunicorn 27.0.1 (the private `_compute_access_log_enabled`).
Breaks: tests/tuning/test_gunicorn_quiet_access.py.
Off: `CONVEYOR_TUNING=-gunicorn_quiet_access` (or `off`): gunicorn's own
Logger, whose access lines still go to the discarding handler.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger


class QuietAccessLogger(Logger):
    """gunicorn's Logger that never computes or writes an access line."""

    def _compute_access_log_enabled(self) -> bool:
        return False

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Nothing: conveyor.access writes one richer line per request."""

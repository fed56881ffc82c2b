"""Wait until a Celery worker of this stack answers, for at most --timeout seconds; always exit 0.

`make run` starts Flower after this (scripts/devstack.py): Flower inspects
the workers once as it starts, and asked before any worker is up it logs
"Inspect method ... failed" for each of its four inspections, lines a
newcomer would have to learn to ignore. Flower starts either way.

    python -m scripts.wait_for_workers --timeout 60
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.wait_for_workers")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most")
    args = parser.parse_args(argv)
    from infra.settings import Settings
    from workers.factory import create_celery_app

    app = create_celery_app(Settings.from_env())
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            try:
                # `stats`: what Flower asks first, answered by workers (not by beat).
                if app.control.inspect(timeout=1.0).stats():
                    return 0
            except Exception:  # the broker is not up yet, or went away: ask again
                time.sleep(1.0)
        print(
            f"no Celery worker answered within {args.timeout:g} s; starting anyway",
            file=sys.stderr,
        )
        return 0
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main())

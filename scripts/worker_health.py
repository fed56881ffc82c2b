"""Worker liveness: send the `system.ping` canary to a queue and wait for its answer (exit 0/1).

Usage (also the container health check): python -m scripts.worker_health --queue ledger
It proves the whole path a job takes (broker -> a worker consuming that queue ->
result backend), which `celery inspect ping` does not: a worker can answer
control messages while its consumer is stuck.
"""

from __future__ import annotations

import argparse
import sys

from celery import Celery


def canary_round_trip(app: Celery, queue: str, timeout: float) -> tuple[bool, str]:
    """(True, detail) when a worker consuming `queue` ran the canary within `timeout` seconds."""
    # The message expires with the check, so a dead queue does not pile up canaries.
    result = app.send_task("system.ping", queue=queue, expires=timeout)
    try:
        answer = result.get(timeout=timeout, propagate=False)
    except Exception as exc:  # timeout, broker or backend down: all mean "not live"
        return False, f"no answer from queue {queue!r} within {timeout:g}s ({type(exc).__name__})"
    finally:
        result.forget()
    if answer != "pong":
        return False, f"unexpected canary answer {answer!r}"
    return True, f"queue {queue!r} consumed the canary"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="ledger", help="queue the checked worker consumes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    args = parser.parse_args(argv)

    from infra.settings import Settings
    from workers.factory import create_celery_app

    # A command-line entry point: it reads the environment, as the worker does.
    app = create_celery_app(Settings.from_env())
    ok, detail = canary_round_trip(app, args.queue, args.timeout)
    print(("ok: " if ok else "unhealthy: ") + detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

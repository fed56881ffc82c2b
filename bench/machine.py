"""What machine and software versions a benchmark ran on."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import redis

_LIBRARIES = ("gunicorn", "flask", "celery", "sqlalchemy", "redis")


def python_loop_ms(iterations: int = 2_000_000, rounds: int = 3) -> float:
    """CPU ms of a fixed pure-Python loop, best of `rounds`: how fast this box runs Python now.

    Shared machines change speed from hour to hour; this lets two pages' absolute
    figures be compared (ratios within one page need no such help).
    """
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        total = 0
        for number in range(iterations):
            total += number
        best = min(best, time.process_time() - started)
    return best * 1000


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _wrk_version(wrk: str | None) -> str:
    if not wrk:
        return "not installed"
    output = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
    return output.split("[")[0].strip() or "unknown"


def describe(pg_version: str, redis_client: redis.Redis, wrk: str | None) -> dict[str, str]:
    """Cores, memory, CPU model and the versions of everything on the measured path."""
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory_gib(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "PostgreSQL": pg_version,
        "Redis": redis_client.info("server")["redis_version"],
        "load generator": _wrk_version(wrk),
        "libraries": ", ".join(f"{name} {version(name)}" for name in _LIBRARIES),
    }

"""Sample a running server or worker with py-spy and summarise where its CPU goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.stack import ROOT

# Frames every sample shares (thread start-up, gunicorn's handler, Celery's command line and
# process start-up): no information.
_PLUMBING = (
    "(threading.py)", "(concurrent/futures/", "(gunicorn/workers/", "(click/", "(celery/bin/",
    "(celery/__main__.py)", "(celery/bootsteps.py)", "(billiard/process.py)", "(billiard/pool.py)",
    "(billiard/popen_fork.py)", "(billiard/context.py)", "(celery/worker/worker.py)", "(celery)",
    "_create_worker_process", "(celery/concurrency/base.py)", "(celery/concurrency/prefork.py)",
    "AsynPool.__init__",
)  # fmt: skip
# A prefork pool process runs under this frame; the worker's main process does not.
_POOL_PROCESS = "Worker.workloop (billiard/pool.py)"

# "function (path/to/file.py:123)": the line number is dropped so one function is one row.
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    return str(found) if found and Path(found).exists() else None


def start(pid: int, output: Path, duration: float) -> subprocess.Popen | None:
    """Sample `pid` (a gunicorn master, a Celery worker) and its children; None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    argv = [
        binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
        "--rate", "250", "--duration", str(max(1, round(duration))),
        "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


# A sample is inside a request when Flask's WSGI entry is on its stack.
IN_REQUEST = "wsgi_app (flask/app.py"


def summarise(raw: Path, top: int = 20, inside: str | None = IN_REQUEST) -> str:
    """Markdown: inclusive share of time per function and the top self-time (leaf) frames.

    `inside`: count only samples with this frame on the stack (None: all of them).
    """
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = in_pool = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_label(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        # Only samples inside a request: gthread's accept loop and idle threads are noise.
        if inside is not None and not any(inside in f for f in frames):
            continue
        n = int(count)
        total += n
        in_pool += n if _POOL_PROCESS in frames else 0
        for frame in set(frames):
            inclusive[frame] += n
        leaf[frames[-1]] += n
    where = "inside requests" if inside == IN_REQUEST else "of the process tree"
    if not total:
        return f"_no samples {where} were collected_"
    rows = ["| function | share of samples |", "| --- | ---: |"]
    ranked = [
        (f, c)
        for f, c in inclusive.most_common()
        if not any(p in f for p in _PLUMBING) and ("(flask/" not in f or "jsonify" in f)
    ]
    rows += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in ranked[:top]]
    leaves = ["| leaf (self time) | share |", "| --- | ---: |"]
    leaves += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in leaf.most_common(top // 2)]
    head = f"{total} samples {where}."
    if inside is None and in_pool:
        head += f" {100 * in_pool / total:.0f}% in pool processes, the rest in the main process."
    return "\n".join([head, "", *rows, "", *leaves])

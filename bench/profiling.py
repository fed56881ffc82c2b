"""Sample a running gunicorn with py-spy and summarise where request time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.stack import ROOT

# Frames every request sample shares (thread start-up, gunicorn's handler): no information.
_PLUMBING = ("(threading.py)", "(concurrent/futures/", "(gunicorn/workers/")

# "function (path/to/file.py:123)": the line number is dropped so one function is one row.
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    return str(found) if found and Path(found).exists() else None


def start(pid: int, output: Path, duration: float) -> subprocess.Popen | None:
    """Begin sampling the gunicorn master `pid` and its workers; None without py-spy."""
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


def summarise(raw: Path, top: int = 20) -> str:
    """Markdown: inclusive share of time per function and the top self-time (leaf) frames."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_label(f) for f in stack.split(";") if "(" in f]
        # Only samples inside a request: gthread's accept loop and idle threads are noise.
        if not any("wsgi_app (flask/app.py" in f for f in frames):
            continue
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        leaf[frames[-1]] += n
    if not total:
        return "_no samples inside requests were collected_"
    rows = ["| function | share of request samples |", "| --- | ---: |"]
    ranked = [
        (f, c)
        for f, c in inclusive.most_common()
        if not any(p in f for p in _PLUMBING) and ("(flask/" not in f or "jsonify" in f)
    ]
    rows += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in ranked[:top]]
    leaves = ["| leaf (self time) | share |", "| --- | ---: |"]
    leaves += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in leaf.most_common(top // 2)]
    return "\n".join([f"{total} samples inside requests.", "", *rows, "", *leaves])

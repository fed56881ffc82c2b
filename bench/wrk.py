"""Run wrk with a generated Lua script and parse its --latency report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
)

# Every wrk thread has its own Lua state; `setup` gives each a different start
# offset so threads do not walk the same paths in lockstep. With tokens, each
# request carries the next user's bearer token.
_LUA = """
local paths = {paths}
local tokens = {tokens}
local method = {method}
local body = {body}
local headers = {headers}
local offset = 0
local thread_count = 0
function setup(thread)
  thread:set("offset", thread_count * 97)
  thread_count = thread_count + 1
end
local i = 0
function request()
  i = i + 1
  if #tokens > 0 then
    headers["Authorization"] = "Bearer " .. tokens[(offset + i) % #tokens + 1]
  end
  return wrk.format(method, paths[(offset + i) % #paths + 1], headers, body)
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors


def _lua_string(value: str | None) -> str:
    return "nil" if value is None else json.dumps(value)  # a JSON string is a valid Lua string


def _lua_table(items) -> str:
    if isinstance(items, dict):
        pairs = (f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in items.items())
        return "{" + ", ".join(pairs) + "}"
    return "{" + ", ".join(json.dumps(item) for item in items) + "}"


def write_script(
    path: Path,
    paths: list[str],
    *,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    tokens: list[str] | None = None,
) -> Path:
    """A Lua script cycling through `paths` (and bearer `tokens`) with one method and body."""
    path.write_text(
        _LUA.format(
            paths=_lua_table(paths),
            tokens=_lua_table(tokens or []),
            method=_lua_string(method),
            body=_lua_string(body),
            headers=_lua_table(headers or {}),
        )
    )
    return path


def require_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(INSTALL_HINT)
    return found


def run(
    base_url: str, script: Path, *, duration: float, connections: int, threads: int
) -> LoadResult:
    """One wrk run against `base_url` for `duration` seconds."""
    argv = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        base_url,
    ]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return parse(output)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS_MS[unit]


def parse(output: str) -> LoadResult:
    """Requests/s, p50, p99 and errors from wrk's --latency output."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if not (rps and total and "50" in percentiles and "99" in percentiles):
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(total.group(1)),
        errors=errors,
    )

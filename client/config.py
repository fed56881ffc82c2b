"""Where the CLI finds its API and token: the environment, else what `conveyor login` saved."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Profile:
    url: str
    token: str | None
    events_url: str | None = None


def credentials_path() -> Path:
    """The saved login: `conveyor/credentials.json` in the user's config directory."""
    return Path(click.get_app_dir("conveyor")) / "credentials.json"


def load(environ: dict[str, str] | None = None) -> Profile:
    """CONVEYOR_URL / CONVEYOR_TOKEN / CONVEYOR_EVENTS_URL when set, else the saved login."""
    env = os.environ if environ is None else environ
    saved: dict[str, str] = {}
    path = credentials_path()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    return Profile(
        url=env.get("CONVEYOR_URL") or saved.get("url") or DEFAULT_URL,
        token=env.get("CONVEYOR_TOKEN") or saved.get("token"),
        events_url=env.get("CONVEYOR_EVENTS_URL") or saved.get("events_url"),
    )


def save(profile: Profile) -> Path:
    """Write the login readable by its owner only (0600, in a 0700 directory)."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 from the start, so the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({k: v for k, v in vars(profile).items() if v is not None}, handle)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT
    return path

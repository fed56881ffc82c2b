"""`make run`: pick Redis and the database, migrate, then run the Procfile in the foreground."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from honcho.environ import parse as parse_dotenv

from scripts.embedded_redis import LOOPBACK, EmbeddedRedis, EmbeddedRedisError, answers_ping
from shared.settings import ROOT, VAR_DIR, ConfigError, Settings

LOCAL_REDIS_PORT = 6379
EMBEDDED_REDIS_PORT = 6380
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    """One line of devstack's own output, told apart from honcho's."""
    print(f"devstack | {message}", flush=True)


def mask_url(url: str) -> str:
    """`url` with any password replaced by ***, safe to print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def read_dotenv(path: Path) -> dict[str, str]:
    """The KEY=value pairs of `path`, parsed exactly as honcho parses them."""
    try:
        return parse_dotenv(path.read_text())
    except FileNotFoundError:
        return {}


def prepare_environment(shell: Mapping[str, str], dotenv: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: .env under the shell's variables, plus run-time defaults."""
    # The shell wins over .env (as in docker compose), so `DATABASE_URL=... make run` works.
    env = {**dotenv, **shell}
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != venv_bin:
        # The Procfile names bare `gunicorn` and `celery`: take the venv's.
        env["PATH"] = os.pathsep.join(p for p in (venv_bin, path) if p)
    # honcho hands the first Procfile entry (web) $PORT, later ones +100 each.
    env.setdefault("PORT", "8000")
    # Unbuffered, so log lines reach honcho's merged output as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ensure_flower_auth(env: dict[str, str]) -> str | None:
    """Invent FLOWER_BASIC_AUTH for this run when unset; return it if invented."""
    if env.get("FLOWER_BASIC_AUTH"):
        return None
    # Flower shows task arguments and can revoke tasks: never run it open.
    env["FLOWER_BASIC_AUTH"] = f"conveyor:{secrets.token_urlsafe(18)}"
    return env["FLOWER_BASIC_AUTH"]


def reset_prometheus_dir(env: Mapping[str, str]) -> None:
    """Create and empty PROMETHEUS_MULTIPROC_DIR when one is configured."""
    directory = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    # prometheus_client needs it emptied between runs, or the last run's dead
    # processes keep adding to this run's counters.
    for stale in path.glob("*.db"):
        stale.unlink()


class Foreground:
    """Runs one child at a time in its own session and relays our signals to it."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_requested = False

    def install(self) -> None:
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._relay)

    def shield(self) -> None:
        """Ignore further signals, so clean-up is not cut short by an impatient Ctrl-C."""
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _relay(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            # The child is in its own session, so this is the only copy it gets.
            self.child.send_signal(signum)
        else:
            raise KeyboardInterrupt

    def run(self, argv: list[str], env: Mapping[str, str]) -> int:
        """Run `argv` to the end and return its exit code (128+N when killed by signal N)."""
        if self.stop_requested:
            return 130
        self.child = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        try:
            code = self.child.wait()
        finally:
            self.child = None
        return 128 - code if code < 0 else code


def choose_redis(env: Mapping[str, str]) -> str | None:
    """The Redis URL to use, or None when an embedded Redis must be started."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if answers_ping(LOOPBACK, LOCAL_REDIS_PORT):
        return f"redis://{LOOPBACK}:{LOCAL_REDIS_PORT}/0"
    return None


def main() -> int:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    env = prepare_environment(os.environ, read_dotenv(ROOT / ".env"))
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        say(f"configuration error: {exc}")
        return 2

    foreground = Foreground()
    foreground.install()
    redis: EmbeddedRedis | None = None
    try:
        redis_url = choose_redis(env)
        if redis_url is None:
            redis = EmbeddedRedis(VAR_DIR, port=EMBEDDED_REDIS_PORT)
            redis.start()
            redis_url = env["REDIS_URL"] = redis.url
            say(f"redis:    {redis_url} (embedded redis-server, pid {redis.pid}, AOF in var/)")
        else:
            env["REDIS_URL"] = redis_url
            say(f"redis:    {mask_url(redis_url)}")
        where = "" if settings.database_url else " (DATABASE_URL unset: SQLite fallback)"
        say(f"database: {mask_url(settings.resolved_database_url)}{where}")
        invented = ensure_flower_auth(env)
        flower_port = env.get("FLOWER_PORT", "5555")
        if invented:
            say(f"flower:   http://127.0.0.1:{flower_port}/ basic auth {invented} (this run only)")
        else:
            say(f"flower:   http://127.0.0.1:{flower_port}/ (FLOWER_BASIC_AUTH from environment)")
        say(f"web:      http://127.0.0.1:{env['PORT']}/")
        reset_prometheus_dir(env)

        code = foreground.run([sys.executable, "-m", "scripts.migrate"], env)
        if code != 0:
            say(f"migrations failed (exit {code}); not starting the stack")
            return code
        # os.devnull as honcho's env file: .env is already merged above, under
        # the shell's variables; honcho would otherwise let .env win.
        return foreground.run(
            [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-e", os.devnull], env
        )
    except EmbeddedRedisError as exc:
        say(f"embedded Redis: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        foreground.shield()
        if redis is not None:
            say(f"stopping embedded redis-server (pid {redis.pid})")
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: pick Redis and the database, migrate, then run the Procfile in the foreground.

Each Procfile line runs under scripts/supervise.py (through a generated
Procfile in ./var), so a process that exits is started again, as compose's
`restart: unless-stopped` does in production; honcho alone would stop them all.

Every port is bound to 127.0.0.1 unless the environment says otherwise
(WEB_BIND_HOST for web and events, FLOWER_ADDRESS, WORKER_METRICS_HOST). The
machine's own Redis (127.0.0.1:6379, when REDIS_URL is unset) is shared
under a key prefix of this checkout's (`conveyor-dev-<id>:`), never under
the production default. What a run decided and must remember (that prefix,
the Flower login it invented) is kept in var/devstack.json (mode 0600);
`make clean` (`python -m scripts.devstack --clean`) deletes the prefix's keys
before ./var goes. Ctrl-C stops everything and exits 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from honcho.environ import parse as parse_dotenv
from honcho.environ import parse_procfile

from infra.settings import ROOT, VAR_DIR, ConfigError, Settings
from scripts.embedded_redis import LOOPBACK, EmbeddedRedis, EmbeddedRedisError, answers_ping

LOCAL_REDIS_PORT = 6379
EMBEDDED_REDIS_PORT = 6380
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SUPERVISED_PROCFILE = VAR_DIR / "Procfile.supervised"
# What runs remember between them; read by `make clean`.
STATE_FILE = VAR_DIR / "devstack.json"
PID_FILE = VAR_DIR / "devstack.pid"
# Exit codes of a stack stopped on request (honcho's for SIGINT, SIGTERM, SIGHUP).
STOPPED_CODES = (0, 130, 143, 129)
# Bound to loopback unless set: a development stack is nobody else's business.
LOOPBACK_BINDS = ("WEB_BIND_HOST", "FLOWER_ADDRESS", "WORKER_METRICS_HOST")
# Run before a process's own command in the generated Procfile.
BEFORE = {
    # Flower inspects the workers once as it starts; before any is up each of
    # its four inspections logs a failure (scripts/wait_for_workers.py).
    "flower": "python -m scripts.wait_for_workers --timeout 60",
}
# Celery warns a worker run as root to drop privileges (a container, a VM).
# Under `make run` that is harmless: every port is on loopback and Conveyor
# accepts JSON only, so the pickle-as-root risk it warns about cannot arise.
ROOT_WARNING_FILTER = "ignore:You're running the worker with superuser privileges"


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


def load_state(path: Path = STATE_FILE) -> dict[str, Any]:
    """What earlier runs remembered (var/devstack.json), or nothing."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(state: Mapping[str, Any], path: Path = STATE_FILE) -> None:
    """Write the state readable by its owner only: it holds the Flower password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(state), handle, indent=2)
    os.chmod(path, 0o600)


def ensure_flower_auth(env: dict[str, str], state: dict[str, Any]) -> str | None:
    """FLOWER_BASIC_AUTH from the environment, else the one kept in `state` (invented once).

    Returns the login when it came from `state` (to print it), None when the
    environment set it.
    """
    if env.get("FLOWER_BASIC_AUTH"):
        return None
    # Flower shows task arguments and can revoke tasks: never run it open.
    login = state.get("flower_basic_auth") or f"conveyor:{secrets.token_urlsafe(18)}"
    state["flower_basic_auth"] = env["FLOWER_BASIC_AUTH"] = login
    return login


def checkout_prefix(root: Path = ROOT) -> str:
    """This checkout's key prefix on a shared Redis: two checkouts never mix their keys."""
    return f"conveyor-dev-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}:"


def bind_to_loopback(env: dict[str, str]) -> None:
    """Every port on 127.0.0.1, unless the environment names another address."""
    for name in LOOPBACK_BINDS:
        env.setdefault(name, LOOPBACK)


def quiet_root_warning(env: dict[str, str], euid: int | None = None) -> None:
    """Filter Celery's run-as-root warning under `make run` (see ROOT_WARNING_FILTER)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return
    filters = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join([*filters, ROOT_WARNING_FILTER])


def supervised_procfile(procfile: str, python: str = sys.executable) -> str:
    """`procfile` with every process line wrapped in scripts/supervise.py (restart on exit)."""
    lines = ["# Generated by scripts/devstack.py from ./Procfile on every `make run`; do not edit."]
    for name, command in parse_procfile(procfile).processes.items():
        if name in BEFORE:
            command = f"{BEFORE[name].replace('python', shlex.quote(python), 1)} && {command}"
        # `exec`: honcho's SIGTERM reaches the supervisor, which passes it on.
        wrapped = f"exec {shlex.quote(python)} -m scripts.supervise --name {name} --"
        lines.append(f"{name}: {wrapped} {shlex.quote(command)}")
    return "\n".join(lines) + "\n"


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
        # A signal that came while a child was being started, for it once it exists.
        self.starting = False
        self.pending: int | None = None

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
            self._pass_on(self.child, signum)
        elif self.starting:
            # Raising here could leave the child being forked running on its own.
            self.pending = signum
        else:
            raise KeyboardInterrupt

    @staticmethod
    def _pass_on(child: subprocess.Popen[bytes], signum: int) -> None:
        # The child is in its own session, so this is the only copy it gets.
        # SIGTERM for Ctrl-C: it stops honcho all the same, and a Python child
        # (the migrations) ends without a KeyboardInterrupt traceback.
        child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self, argv: list[str], env: Mapping[str, str]) -> int:
        """Run `argv` to the end and return its exit code (128+N when killed by signal N)."""
        if self.stop_requested:
            return 130
        self.starting = True
        try:
            self.child = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        finally:
            self.starting = False
        try:
            if self.pending is not None:
                self._pass_on(self.child, self.pending)
            code = self.child.wait()
        finally:
            self.child = None
        return 128 - code if code < 0 else code


def choose_redis(env: Mapping[str, str]) -> str | None:
    """The Redis URL to use, or None when an embedded Redis must be started."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if env.get("REDIS_SENTINELS"):
        return Settings().redis_url  # database 0 of the master the sentinels name
    if answers_ping(LOOPBACK, LOCAL_REDIS_PORT):
        return f"redis://{LOOPBACK}:{LOCAL_REDIS_PORT}/0"
    return None


def use_redis(env: dict[str, str], state: dict[str, Any]) -> EmbeddedRedis | None:
    """Point env at REDIS_URL, else the machine's Redis under this checkout's prefix, else embedded.

    Returns the embedded server when it started one (the caller stops it).
    """
    given = bool(env.get("REDIS_URL") or env.get("REDIS_SENTINELS"))
    redis_url = choose_redis(env)
    if redis_url is None:
        redis = EmbeddedRedis(VAR_DIR, port=EMBEDDED_REDIS_PORT)
        redis.start()
        env["REDIS_URL"] = redis.url
        state.pop("shared_redis", None)  # its keys live in var/, removed with it
        say(f"redis:    {redis.url} (embedded redis-server, pid {redis.pid}, AOF in var/)")
        return redis
    env["REDIS_URL"] = redis_url
    if given:
        say(f"redis:    {mask_url(redis_url)} (REDIS_URL)")
        return None
    # The machine's Redis: others' data may be there, so keys of our own.
    prefix = env.setdefault("CONVEYOR_REDIS_PREFIX", checkout_prefix())
    state["shared_redis"] = {"url": redis_url, "prefix": prefix}
    say(f"redis:    {redis_url}, keys under {prefix} (this checkout's; `make clean` deletes them)")
    return None


def running_pid(path: Path = PID_FILE) -> int | None:
    """The PID of a `make run` of this checkout that is still running, if any."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def clean(state_path: Path = STATE_FILE, pid_path: Path = PID_FILE) -> int:
    """`make clean`: delete the keys runs left on a shared Redis (var/ itself goes after)."""
    if (pid := running_pid(pid_path)) is not None:
        say(f"make run is still running (pid {pid}): stop it first")
        return 1
    shared = load_state(state_path).get("shared_redis")
    if not shared:
        return 0
    import redis

    client = redis.Redis.from_url(shared["url"], socket_connect_timeout=2, socket_timeout=10)
    try:
        deleted = 0
        for keys in _batches(client.scan_iter(match=f"{shared['prefix']}*", count=1000), 500):
            deleted += client.delete(*keys)
    except redis.RedisError as exc:
        say(f"Redis keys under {shared['prefix']} left on {mask_url(shared['url'])}: {exc}")
        return 1
    finally:
        client.close()
    say(f"deleted {deleted} Redis keys under {shared['prefix']} on {mask_url(shared['url'])}")
    return 0


def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--clean"]:
        return clean()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    if (pid := running_pid()) is not None:
        say(f"make run is already running in this checkout (pid {pid})")
        return 1
    env = prepare_environment(os.environ, read_dotenv(ROOT / ".env"))
    bind_to_loopback(env)
    quiet_root_warning(env)
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        say(f"configuration error: {exc}")
        return 2

    foreground = Foreground()
    foreground.install()
    redis: EmbeddedRedis | None = None
    state = load_state()
    PID_FILE.write_text(str(os.getpid()))
    try:
        redis = use_redis(env, state)
        if settings.redis_sentinels:
            master, sentinels = settings.redis_sentinel_master, settings.redis_sentinels
            say(f"          master {master!r} found through Sentinel at {sentinels}")
        where = "" if settings.database_url else " (DATABASE_URL unset: SQLite fallback)"
        say(f"database: {mask_url(settings.resolved_database_url)}{where}")
        kept = ensure_flower_auth(env, state)
        save_state(state)
        flower = f"http://{env['FLOWER_ADDRESS']}:{env.get('FLOWER_PORT', '5555')}/"
        if kept:
            say(f"flower:   {flower} login {kept} (kept in var/devstack.json)")
        else:
            say(f"flower:   {flower} (FLOWER_BASIC_AUTH from the environment)")
        host = env["WEB_BIND_HOST"]
        events = env.get("EVENTS_PORT", "8001")
        say(f"web:      http://{host}:{env['PORT']}/ (event streams also on :{events})")
        reset_prometheus_dir(env)

        code = foreground.run([sys.executable, "-m", "scripts.migrate"], env)
        if code != 0:
            return _stopped(foreground, code, f"migrations failed (exit {code}); not starting")
        SUPERVISED_PROCFILE.write_text(supervised_procfile((ROOT / "Procfile").read_text()))
        procfile = str(SUPERVISED_PROCFILE.relative_to(ROOT))
        # os.devnull as honcho's env file: .env is already merged above, under
        # the shell's variables; honcho would otherwise let .env win.
        code = foreground.run(
            [sys.executable, "-m", "honcho", "start", "-f", procfile, "-e", os.devnull], env
        )
        return _stopped(foreground, code, f"the stack stopped (exit {code})")
    except EmbeddedRedisError as exc:
        say(f"embedded Redis: {exc}")
        return 1
    except KeyboardInterrupt:
        return _stopped(foreground, 130, "")
    finally:
        foreground.shield()
        if redis is not None:
            say(f"stopping embedded redis-server (pid {redis.pid})")
            redis.stop()
        with contextlib.suppress(OSError):
            PID_FILE.unlink()


def _stopped(foreground: Foreground, code: int, failure: str) -> int:
    """0 when the user asked the stack to stop (Ctrl-C, SIGTERM): no `make: *** Error 130`."""
    if foreground.stop_requested and code in STOPPED_CODES:
        say("stopped")
        return 0
    if failure:
        say(failure)
    return code


if __name__ == "__main__":
    sys.exit(main())

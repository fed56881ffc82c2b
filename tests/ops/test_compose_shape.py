"""docker-compose.yml's application services, each run with its own command and environment.

This test needs no Docker engine (it runs in `make test`); `make compose-check`
runs the real stack in Docker (docs/compose.md). The test reads
docker-compose.yml, interpolates it as compose does (`${VAR:?msg}`,
`${VAR:-default}`, `$$`) from a test .env mapping (which is also what the
services' `env_file: .env` hands them), and runs migrate, web, events, worker,
worker_ai, beat and flower with exactly their `command` and `environment`
(x-app merged), the image's ENV, cwd = the repository (the image's /app) and
HOSTNAME = this machine's hostname, which is what Celery's `%h` expands to.
What it rewrites, and nothing else:
- compose hostnames: `postgres` in DATABASE_URL becomes 127.0.0.1:5432 with a
  private database owned by a private role (`conveyor_shape_<run>`, not
  `conveyor`, so parallel runs never share a role; the compose password is
  its password); `redis` in REDIS_URL becomes 127.0.0.1:<free port>, a private
  redis-server started with the compose `redis` command plus
  `--port --bind 127.0.0.1 --dir`;
- ports compose fixes inside containers (web 8000, flower 5555, the workers'
  9808) become free ports, in environment, command and healthcheck alike;
- volume and tmpfs targets (beat's /app/var, web's /tmp/prometheus) become
  private directories.
Health checks run as compose runs them: CMD as argv, CMD-SHELL under /bin/sh -c,
in the service's environment. Images, the Dockerfile build, container
networking, restart policies and volume persistence are not exercised here;
`make compose-check` exercises them.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import yaml
from psycopg2 import sql

from beat_schedule import beat_schedule
from infra.settings import ROOT
from tests.support.accounts import PASSWORD
from tests.support.environment import ADMIN_DSN, PG_HOST, PG_PORT
from tests.support.metrics import value
from tests.support.processes import free_port, running_server

RUN_ID = uuid.uuid4().hex[:10]
# What a user puts in .env after `cp .env.example .env` (compose's own instructions).
DOTENV = {
    "SECRET_KEY": "compose-shape-test-secret-key-abcdefghijklmnopqrstuvwxyz",
    "POSTGRES_PASSWORD": "compose-shape-pw",
    "FLOWER_BASIC_AUTH": "ops:compose-shape-flower",
}
LONG_RUNNING = ("beat", "worker", "worker_ai", "web", "events", "flower")  # beat first: its clock
HEALTH_DEADLINE = 90.0


# --- compose, read and interpolated -------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(node: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over a loaded YAML tree."""

    def substitute(match: re.Match) -> str:
        escaped, braced, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        name = braced or bare
        current = variables.get(name)
        # The ":" forms treat an empty value as unset, the bare forms only a missing one.
        missing = current is None or (operator is not None and operator[0] == ":" and not current)
        if missing and operator and operator.endswith("?"):
            raise ValueError(f"required variable {name} is missing a value: {argument}")
        if missing and operator and operator.endswith("-"):
            return argument
        return current or ""

    if isinstance(node, str):
        return _VARIABLE.sub(substitute, node)
    if isinstance(node, list):
        return [interpolate(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(item, variables) for key, item in node.items()}
    return node


def load_compose(variables: Mapping[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), variables)


def image_environment() -> dict[str, str]:
    """The Dockerfile's ENV lines, plus what its python:3.11-slim base sets."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env = {"LANG": "C.UTF-8"}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """A compose healthcheck `test` as the argv the engine runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return list(test[1:])


def seconds(duration: str) -> float:
    """A compose duration such as "30s" or "1m30s"."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, duration
    return sum(float(number) * units[unit] for number, unit in parts)


# --- the mapping onto this machine --------------------------------------------------


@dataclass
class Service:
    """One compose service, localized: argv, environment, healthcheck, ports."""

    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    health_timeout: float
    ports: dict[int, int] = field(default_factory=dict)  # container port -> local port


def container_ports(spec: dict[str, Any]) -> set[int]:
    """Ports the service listens on inside its container: published ones and *_PORT values."""
    ports = {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in spec.get("ports", [])}
    for name, raw in (spec.get("environment") or {}).items():
        if (name == "PORT" or name.endswith("_PORT")) and str(raw).isdigit():
            ports.add(int(raw))
    return ports


def mount_targets(spec: dict[str, Any]) -> list[str]:
    volumes = [str(entry).split(":")[1] for entry in spec.get("volumes", [])]
    return volumes + [str(entry).split(":")[0] for entry in spec.get("tmpfs", [])]


def localize_url(value: str, database: str, role: str, redis_port: int) -> str:
    """Point a compose-network URL (host `postgres` or `redis`) at the private servers."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.hostname == "postgres":
        password = parts.password or ""
        netloc = f"{role}:{password}@{PG_HOST}:{PG_PORT}"
        return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))
    if parts.hostname == "redis":
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{redis_port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return value


def localize(
    name: str,
    spec: dict[str, Any],
    *,
    base_env: Mapping[str, str],
    dotenv: Mapping[str, str],
    database: str,
    role: str,
    redis_port: int,
    scratch: Path,
) -> Service:
    """The service's command, environment and healthcheck with only the documented rewrites."""
    ports = {port: free_port() for port in sorted(container_ports(spec))}
    mounts = {
        target: scratch / name / target.strip("/").replace("/", "_")
        for target in mount_targets(spec)
    }
    for directory in mounts.values():
        directory.mkdir(parents=True)

    def rewrite(text: str) -> str:
        for container_port, local_port in ports.items():
            text = re.sub(rf"\b{container_port}\b", str(local_port), text)
        for target, directory in mounts.items():
            text = re.sub(rf"{re.escape(target)}(?=/|$|\s|')", str(directory), text)
        return text

    env = dict(base_env)
    # env_file .env: the same file compose interpolates from; `environment` wins.
    if any(
        str(entry.get("path", entry) if isinstance(entry, dict) else entry) == ".env"
        for entry in spec.get("env_file", [])
    ):
        env.update(dotenv)
    for key, raw in (spec.get("environment") or {}).items():
        env[key] = rewrite(localize_url(str(raw), database, role, redis_port))

    command = spec["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(token) for token in command]
    test = spec.get("healthcheck", {}).get("test")
    healthcheck = [rewrite(token) for token in healthcheck_argv(test)] if test else None
    timeout = seconds(spec.get("healthcheck", {}).get("timeout", "30s"))
    return Service(name, [rewrite(token) for token in argv], env, healthcheck, timeout, ports)


# --- the stack ----------------------------------------------------------------------


@dataclass
class Stack:
    services: dict[str, Service]
    processes: dict[str, subprocess.Popen]
    logs: dict[str, Path]
    mounts: Path
    beat_started: float
    health: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def url(self, service: str, container_port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.services[service].ports[container_port]}{path}"

    def log_tail(self, service: str) -> str:
        return self.logs[service].read_text(errors="replace")[-3000:]


def _admin(statements: list[sql.Composable]) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    scratch = tmp_path_factory.mktemp("compose")
    compose = load_compose(DOTENV)
    database, role = f"conveyor_shape_{RUN_ID}", f"conveyor_shape_{RUN_ID}"
    _admin(
        [
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(DOTENV["POSTGRES_PASSWORD"])
            ),
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            ),
        ]
    )
    home = scratch / "home"
    home.mkdir()
    base_env = {
        **image_environment(),
        # The venv stands in for the image's site-packages: `python`, `celery`
        # and `gunicorn` resolve there first, as on the image's PATH.
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        # Docker sets HOSTNAME to the container's hostname, which is what %h reads.
        "HOSTNAME": socket.gethostname(),
    }
    redis_port = free_port()
    redis_dir = scratch / "redis-data"
    redis_dir.mkdir()
    redis_argv = [
        *compose["services"]["redis"]["command"],
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(redis_dir),
    ]
    services = {
        name: localize(
            name,
            compose["services"][name],
            base_env=base_env,
            dotenv=DOTENV,
            database=database,
            role=role,
            redis_port=redis_port,
            scratch=scratch,
        )
        for name in ("migrate", *LONG_RUNNING)
    }
    logs = {name: scratch / f"{name}.log" for name in services}
    try:
        with ExitStack() as running:
            running.enter_context(
                running_server(
                    redis_argv, env=base_env, log_path=scratch / "redis.log", port=redis_port
                )
            )
            migrate = services["migrate"]
            done = subprocess.run(
                migrate.argv, cwd=ROOT, env=migrate.env, capture_output=True, text=True, timeout=120
            )
            logs["migrate"].write_text(done.stdout + done.stderr)
            assert done.returncode == 0, f"migrate exited {done.returncode}:\n{done.stderr[-3000:]}"

            processes: dict[str, subprocess.Popen] = {}
            servers = {name: ExitStack() for name in LONG_RUNNING}
            try:
                seed_restarted_beat(services["beat"])
                beat_started = time.monotonic()
                for name in LONG_RUNNING:
                    service = services[name]
                    processes[name] = servers[name].enter_context(
                        running_server(service.argv, env=service.env, log_path=logs[name])
                    )
                stack = Stack(services, processes, logs, scratch, beat_started)
                # Compose's "healthy": each service's own check passes (side by side).
                deadline = time.monotonic() + HEALTH_DEADLINE
                with ThreadPoolExecutor(max_workers=len(LONG_RUNNING)) as pool:
                    checks = pool.map(
                        lambda name: wait_healthy(stack, name, deadline), LONG_RUNNING
                    )
                    stack.health = dict(zip(LONG_RUNNING, checks))
                yield stack
            finally:
                # Each stops by its PID (SIGTERM, then a bounded wait), all at once
                # as `docker compose down` does, instead of one warm shutdown after another.
                with ThreadPoolExecutor(max_workers=len(servers)) as pool:
                    list(pool.map(ExitStack.close, servers.values()))
    finally:
        _admin(
            [
                sql.SQL(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}"
                ).format(sql.Literal(database)),
                sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)),
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)),
            ]
        )


# --- HTTP helpers -------------------------------------------------------------------


def http(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_healthy(stack: Stack, name: str, deadline: float) -> tuple[bool, str]:
    """Run the service's healthcheck until it passes (or the service dies, or time runs out)."""
    service = stack.services[name]
    assert service.healthcheck, name
    detail = "never ran"
    while time.monotonic() < deadline:
        if stack.processes[name].poll() is not None:
            return False, f"exited {stack.processes[name].returncode}:\n{stack.log_tail(name)}"
        try:
            check = subprocess.run(
                service.healthcheck,
                cwd=ROOT,
                env=service.env,
                capture_output=True,
                text=True,
                timeout=service.health_timeout,
            )
        except subprocess.TimeoutExpired:
            detail = f"timed out after {service.health_timeout:g}s"
            continue
        if check.returncode == 0:
            return True, "healthy"
        detail = f"exit {check.returncode}: {(check.stdout + check.stderr)[-1500:]}"
        time.sleep(0.5)
    return False, f"{detail}\n--- {name} log ---\n{stack.log_tail(name)}"


def wait_for_job(stack: Stack, headers: Mapping[str, str], task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = http(
            "GET", stack.url("web", 8000, f"/api/v1/tasks/{task_id}"), None, headers
        )
        assert status == 200, body
        if body["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {task_id} stuck in {body.get('state')}")


def metrics(stack: Stack, service: str) -> str:
    """The service's task metrics, from its WORKER_METRICS_PORT."""
    with urllib.request.urlopen(stack.url(service, 9808, "/metrics"), timeout=10) as response:
        return response.read().decode()


def task_succeeded(stack: Stack, service: str, task: str) -> float:
    """The service's conveyor_task_succeeded_total for `task`."""
    return value(metrics(stack, service), "conveyor_task_succeeded_total", task=task)


# --- the tests ----------------------------------------------------------------------


def test_compose_refuses_to_interpolate_without_its_secrets() -> None:
    for missing in DOTENV:
        partial = {k: v for k, v in DOTENV.items() if k != missing}
        with pytest.raises(ValueError, match=missing):
            load_compose(partial)


def test_every_application_service_is_run_here() -> None:
    # A new service built from this repository must join the shape test too.
    services = load_compose(DOTENV)["services"]
    built = {name for name, spec in services.items() if "build" in spec}
    assert built == {"migrate", *LONG_RUNNING}


def test_every_service_passes_its_own_healthcheck(stack: Stack) -> None:
    failed = {name: detail for name, (ok, detail) in stack.health.items() if not ok}
    assert not failed, "\n\n".join(f"{name}: {detail}" for name, detail in failed.items())


def test_a_ledger_job_goes_submit_to_success_over_http(stack: Stack) -> None:
    username = f"compose_{RUN_ID}"
    status, body = http(
        "POST",
        stack.url("web", 8000, "/api/v1/auth/register"),
        {"username": username, "password": PASSWORD},
    )
    assert status == 201, body
    status, login = http(
        "POST",
        stack.url("web", 8000, "/api/v1/auth/login"),
        {"username": username, "password": PASSWORD},
    )
    assert status == 200, login
    headers = {"Authorization": f"Bearer {login['access_token']}"}

    status, accepted = http(
        "POST",
        stack.url("web", 8000, "/api/v1/transactions"),
        {"type": "credit", "amount": 1250, "description": "compose"},
        headers,
    )
    assert status == 202, accepted
    done = wait_for_job(stack, headers, accepted["task_id"])
    assert done["state"] == "SUCCESS", done
    assert done["result"]["transaction_id"] and done["result"]["balance"] >= 1250
    # Production keeps the login-triggered random batch on: it went through the same worker.
    assert wait_for_job(stack, headers, login["task_id"])["state"] == "SUCCESS"


def test_events_streams_a_job_from_submit_to_success(stack: Stack) -> None:
    username = f"compose_events_{RUN_ID}"
    register = stack.url("web", 8000, "/api/v1/auth/register")
    assert http("POST", register, {"username": username, "password": PASSWORD})[0] == 201
    status, login = http(
        "POST",
        stack.url("web", 8000, "/api/v1/auth/login"),
        {"username": username, "password": PASSWORD},
    )
    assert status == 200, login
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    status, accepted = http(
        "POST", stack.url("web", 8000, "/api/v1/transactions"), {"type": "credit", "amount": 5},
        headers,
    )  # fmt: skip
    assert status == 202, accepted
    stream = urllib.request.Request(
        stack.url("events", 8001, f"/api/v1/tasks/{accepted['task_id']}/events"), headers=headers
    )
    # The events process closes the stream after the terminal event.
    with urllib.request.urlopen(stream, timeout=60) as response:
        body = response.read().decode()
    data = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    states = [json.loads(each)["state"] for each in data]
    assert states[-1] == "SUCCESS", body


def test_worker_exporter_counts_its_prefork_children(stack: Stack) -> None:
    # The health check's canary (system.ping on ledger) ran in a prefork child by now.
    assert task_succeeded(stack, "worker", "system.ping") >= 1, metrics(stack, "worker")


def test_an_ai_job_runs_on_worker_ai(stack: Stack) -> None:
    username = f"compose_ai_{RUN_ID}"
    assert (
        http(
            "POST",
            stack.url("web", 8000, "/api/v1/auth/register"),
            {"username": username, "password": PASSWORD},
        )[0]
        == 201
    )
    status, login = http(
        "POST",
        stack.url("web", 8000, "/api/v1/auth/login"),
        {"username": username, "password": PASSWORD},
    )
    assert status == 200, login
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    status, accepted = http(
        "POST",
        stack.url("web", 8000, "/api/v1/ai/generate"),
        {"kind": "text", "prompt": "compose shape", "options": {"operation": "summarize"}},
        headers,
    )
    assert status == 202, accepted
    done = wait_for_job(stack, headers, accepted["task_id"])
    assert done["state"] == "SUCCESS", done
    assert done["result"]["provider"] == "offline" and done["result"]["text"]
    # Counted by worker_ai's own exporter (its rewritten WORKER_METRICS_PORT), not worker's.
    assert task_succeeded(stack, "worker_ai", "ai.text") >= 1


def test_flower_answers_401_without_credentials_and_200_with(stack: Stack) -> None:
    url = stack.url("flower", 5555, "/")
    assert http("GET", url)[0] == 401
    wrong = base64.b64encode(b"ops:not-the-password").decode()
    assert http("GET", url, None, {"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(DOTENV["FLOWER_BASIC_AUTH"].encode()).decode()
    assert http("GET", url, None, {"Authorization": f"Basic {right}"})[0] == 200


_SEED_BEAT = """
import datetime, sys
from celery.beat import PersistentScheduler
from workers.app import app

scheduler = PersistentScheduler(app=app, schedule_filename=sys.argv[1])
now = app.now()
for entry in scheduler.schedule.values():
    entry.last_run_at = now - entry.schedule.run_every - datetime.timedelta(seconds=1)
scheduler.sync()
scheduler.close()
"""


def seed_restarted_beat(beat: Service) -> None:
    """Leave beat's schedule file as a beat restarted one interval later finds it.

    A fresh schedule counts every entry as just run, so its first send comes a
    full interval (60 s) after start; a restarted beat resumes from the file in
    its volume. Starting from that second shape keeps this test short while
    beat still runs exactly the compose command, with its own -s file.
    """
    schedule = beat.argv[beat.argv.index("-s") + 1]
    subprocess.run(
        [sys.executable, "-c", _SEED_BEAT, schedule],
        cwd=ROOT,
        env=beat.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def beat_tasks_run(stack: Stack, tasks: set[str]) -> set[str]:
    """Which of `tasks` the worker's JSON log reports as succeeded."""
    seen = set()
    for line in stack.logs["worker"].read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        data = record.get("data") or {}
        if record.get("logger") == "celery.app.trace" and "succeeded" in record.get("message", ""):
            seen.add(data.get("name"))
    return seen & tasks


def test_beat_schedule_fires_and_the_worker_runs_it(stack: Stack) -> None:
    # Beat resumes a schedule whose entries are due (seed_restarted_beat), so
    # the shortest entries are sent as it starts.
    shortest = min(entry["schedule"] for entry in beat_schedule.values())
    tasks = {entry["task"] for entry in beat_schedule.values() if entry["schedule"] == shortest}
    deadline = stack.beat_started + 45
    while not beat_tasks_run(stack, tasks):
        assert stack.processes["beat"].poll() is None, stack.log_tail("beat")
        assert time.monotonic() < deadline, (
            f"none of {sorted(tasks)} ran within 45 s of beat's start\n"
            f"--- beat ---\n{stack.log_tail('beat')}\n--- worker ---\n{stack.log_tail('worker')}"
        )
        time.sleep(0.5)
    # Beat keeps its schedule in the `beat-schedule` volume (/app/var), as compose mounts it.
    schedule_files = list(stack.mounts.glob("beat/app_var/celerybeat-schedule*"))
    assert schedule_files, sorted(str(p) for p in stack.mounts.rglob("*"))

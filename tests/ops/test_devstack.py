"""The development stack and deployment files: embedded Redis, Procfile, compose, env docs."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import redis
import yaml
from honcho.environ import parse_procfile

from infra.settings import ROOT, Settings
from scripts.devstack import (
    ROOT_WARNING_FILTER,
    Foreground,
    bind_to_loopback,
    checkout_prefix,
    choose_redis,
    clean,
    ensure_flower_auth,
    mask_url,
    prepare_environment,
    quiet_root_warning,
    reset_prometheus_dir,
    save_state,
    use_redis,
)
from scripts.embedded_redis import EmbeddedRedis, EmbeddedRedisError, pick_port
from tests.support.environment import process_environment

PROCESS_TYPES = ["web", "events", "worker", "worker_ai", "beat", "flower"]
LONG_RUNNING = {"postgres", "redis", "web", "events", "worker", "worker_ai", "beat", "flower"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def option(tokens: list[str], flag: str) -> str:
    """The value after `flag` in a command's tokens."""
    return tokens[tokens.index(flag) + 1]


# --- embedded Redis ---------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis", port=pick_port(None)).start()
    yield server
    server.stop()


def test_embedded_redis_answers_with_aof_on(embedded: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(embedded.url, decode_responses=True)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("bind")["bind"] == "127.0.0.1"

    client.set("conveyor:test", "persisted")
    aof_paths = [embedded.data_dir / "appendonly.aof", embedded.data_dir / "appendonlydir"]
    deadline = time.monotonic() + 5
    while not any(p.exists() and p.stat().st_size > 0 for p in aof_paths):
        assert time.monotonic() < deadline, "no append-only file after a write"
        time.sleep(0.05)
    client.close()


def test_embedded_redis_stop_ends_its_process(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, port=pick_port(None)).start()
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    server.stop()
    assert not pid_alive(pid)
    assert server.pid is None
    server.stop()  # a second stop is harmless


def test_embedded_redis_context_manager_and_restart_keep_data(tmp_path: Path) -> None:
    port = pick_port(None)
    with EmbeddedRedis(tmp_path, port=port) as server:
        pid = server.pid
        redis.Redis.from_url(server.url).set("conveyor:kept", "1")
    assert pid is not None and not pid_alive(pid)
    # AOF replays on the next start, which is what keeps queued jobs across runs.
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert redis.Redis.from_url(server.url, decode_responses=True).get("conveyor:kept") == "1"


def test_embedded_redis_refuses_a_data_dir_in_use(embedded: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="still uses"):
        EmbeddedRedis(embedded.data_dir, port=pick_port(None)).start()


# --- devstack ---------------------------------------------------------------------


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert "s3cret" not in mask_url("postgresql://app:s3cret@[::1]:5432/x")


def test_prepare_environment_puts_venv_first_and_shell_over_dotenv() -> None:
    env = prepare_environment(
        {"PATH": "/usr/bin", "DATABASE_URL": "from-shell"},
        {"DATABASE_URL": "from-dotenv", "AI_MODEL": "from-dotenv"},
    )
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin"]
    assert env["DATABASE_URL"] == "from-shell"
    assert env["AI_MODEL"] == "from-dotenv"
    assert env["PORT"] == "8000"


def test_flower_auth_is_invented_once_and_kept() -> None:
    env: dict[str, str] = {}
    state: dict = {}
    invented = ensure_flower_auth(env, state)
    assert invented and re.fullmatch(r"conveyor:[\w-]{20,}", invented)
    assert env["FLOWER_BASIC_AUTH"] == state["flower_basic_auth"] == invented
    # The next run finds it in its state (var/devstack.json) and uses it again.
    again: dict[str, str] = {}
    assert ensure_flower_auth(again, state) == invented == again["FLOWER_BASIC_AUTH"]
    # Set in the environment, it wins and nothing is invented.
    assert ensure_flower_auth({"FLOWER_BASIC_AUTH": "ops:mine"}, {}) is None


def test_choose_redis_prefers_an_explicit_url() -> None:
    assert choose_redis({"REDIS_URL": "redis://elsewhere:6379/1"}) == "redis://elsewhere:6379/1"


def test_choose_redis_behind_sentinel_starts_no_embedded_redis() -> None:
    # The sentinels name the master; the default URL only says database 0.
    assert choose_redis({"REDIS_SENTINELS": "sentinel-1:26379"}) == "redis://127.0.0.1:6379/0"


def test_the_machines_redis_is_shared_under_a_prefix_of_this_checkouts(monkeypatch) -> None:
    from urllib.parse import urlsplit

    from scripts import devstack
    from tests.support.environment import REDIS_URL

    assert checkout_prefix(Path("/a/conveyor")) == checkout_prefix(Path("/a/conveyor"))
    assert checkout_prefix(Path("/a/conveyor")) != checkout_prefix(Path("/b/conveyor"))
    assert re.fullmatch(r"conveyor-dev-[0-9a-f]{8}:", checkout_prefix())
    # "The machine's Redis" is this run's (127.0.0.1:6379 here, or the one the run started).
    monkeypatch.setattr(devstack, "LOCAL_REDIS_PORT", urlsplit(REDIS_URL).port)
    found: dict[str, str] = {}
    state: dict = {}
    assert use_redis(found, state) is None  # it answers: no embedded Redis
    assert found["CONVEYOR_REDIS_PREFIX"] == checkout_prefix()
    assert state["shared_redis"] == {"url": found["REDIS_URL"], "prefix": checkout_prefix()}
    # Told otherwise (REDIS_URL, or a prefix of one's own), it does as told.
    given = {"REDIS_URL": "redis://127.0.0.1:6379/3"}
    assert use_redis(given, {}) is None and "CONVEYOR_REDIS_PREFIX" not in given
    mine = {"CONVEYOR_REDIS_PREFIX": "mine:"}
    use_redis(mine, state)
    assert mine["CONVEYOR_REDIS_PREFIX"] == state["shared_redis"]["prefix"] == "mine:"


def test_every_port_on_loopback_unless_set() -> None:
    env = {"FLOWER_ADDRESS": "0.0.0.0"}
    bind_to_loopback(env)
    assert env == {"WEB_BIND_HOST": "127.0.0.1", "FLOWER_ADDRESS": "0.0.0.0",
                   "WORKER_METRICS_HOST": "127.0.0.1"}  # fmt: skip


def test_celerys_root_warning_is_filtered_only_for_root() -> None:
    env = {"PYTHONWARNINGS": "error::DeprecationWarning"}
    quiet_root_warning(env, euid=1000)
    assert env["PYTHONWARNINGS"] == "error::DeprecationWarning"
    quiet_root_warning(env, euid=0)
    assert env["PYTHONWARNINGS"] == f"error::DeprecationWarning,{ROOT_WARNING_FILTER}"
    # The filter as Python reads it: the warning Celery gives, and nothing else, is ignored.
    probe = (
        "import warnings; "
        'warnings.warn("You\'re running the worker with superuser privileges: this is bad"); '
        "warnings.warn('something else')"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], env={**process_environment(), **env},
        capture_output=True, text=True,
    ).stderr  # fmt: skip
    assert "superuser" not in shown and "something else" in shown


def test_clean_deletes_only_the_prefix_it_recorded_and_not_while_running(
    tmp_path: Path, redis_client
) -> None:
    from tests.support.environment import REDIS_PREFIX, REDIS_URL

    prefix = f"{REDIS_PREFIX}devstack-clean:"
    state, pid = tmp_path / "devstack.json", tmp_path / "devstack.pid"
    redis_client.set(f"{prefix}a", 1)
    redis_client.set(f"{prefix}b", 2)
    redis_client.set(f"{REDIS_PREFIX}devstack-other", 3)
    save_state({"shared_redis": {"url": REDIS_URL, "prefix": prefix}}, state)
    assert state.stat().st_mode & 0o777 == 0o600
    pid.write_text(str(os.getpid()))  # a make run still going: refused, nothing deleted
    assert clean(state, pid) == 1 and redis_client.exists(f"{prefix}a")
    pid.unlink()
    assert clean(state, pid) == 0
    assert not redis_client.exists(f"{prefix}a", f"{prefix}b")
    assert redis_client.get(f"{REDIS_PREFIX}devstack-other") == "3"
    assert clean(tmp_path / "absent.json", pid) == 0  # nothing recorded: nothing to do


def test_prometheus_dir_is_created_and_emptied(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    reset_prometheus_dir({"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert list(directory.iterdir()) == []


def test_foreground_returns_the_child_exit_code() -> None:
    env = process_environment()
    assert Foreground().run([sys.executable, "-c", "raise SystemExit(3)"], env) == 3
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    assert Foreground().run(killed, env) == 128 + 15


def test_devstack_module_imports_cleanly() -> None:
    # `make run` is `python -m scripts.devstack`; importing must not start anything.
    result = subprocess.run(
        [sys.executable, "-c", "import scripts.devstack"], cwd=ROOT, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()


# --- Procfile ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


def test_procfile_has_exactly_the_six_process_types(procfile: dict[str, str]) -> None:
    assert list(procfile) == PROCESS_TYPES  # web first: honcho gives it $PORT itself


@pytest.mark.parametrize("name", PROCESS_TYPES)
def test_procfile_lines_are_valid_shell(procfile: dict[str, str], name: str) -> None:
    subprocess.run(["sh", "-n", "-c", procfile[name]], check=True)


def test_procfile_pools_and_queues(procfile: dict[str, str]) -> None:
    web = shlex.split(procfile["web"])
    assert "gunicorn" in web and option(web, "-c") == "gunicorn.conf.py" and "api.wsgi:app" in web

    events = shlex.split(procfile["events"])
    assert "api.events_wsgi:app" in events and option(events, "--worker-class") == "gevent"
    assert option(events, "--workers") == "1"  # one process: one Redis reader for its streams
    assert option(events, "--bind") == "${WEB_BIND_HOST:-0.0.0.0}:${EVENTS_PORT:-8001}"

    worker = shlex.split(procfile["worker"])
    assert worker[worker.index("celery") :][:4] == ["celery", "-A", "workers.app", "worker"]
    assert option(worker, "-P") == "prefork"
    assert option(worker, "-Q") == "ledger,maintenance,webhooks"

    worker_ai = shlex.split(procfile["worker_ai"])
    assert option(worker_ai, "-A") == "workers.app" and "worker" in worker_ai
    assert option(worker_ai, "-P") == "gevent"
    assert option(worker_ai, "-Q") == "ai"
    assert option(worker_ai, "-c") == "${AI_WORKER_CONCURRENCY:-100}"

    beat = shlex.split(procfile["beat"])
    assert option(beat, "-A") == "workers.app" and "beat" in beat
    assert "var/celerybeat-schedule" in option(beat, "-s")
    assert "--enable-remote-control" in beat  # answers `celery inspect ping`

    flower = procfile["flower"]
    assert "-A workers.app flower" in flower
    assert "--port=" in flower and "FLOWER_PORT:-5555" in flower
    assert "${FLOWER_BASIC_AUTH:?" in flower  # never starts without a login


def test_flower_refuses_to_start_without_basic_auth(procfile: dict[str, str]) -> None:
    env = {k: v for k, v in process_environment().items() if k != "FLOWER_BASIC_AUTH"}
    guard = procfile["flower"].split("&&")[0]
    result = subprocess.run(["sh", "-c", guard], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "FLOWER_BASIC_AUTH" in result.stderr


# --- gunicorn.conf.py -------------------------------------------------------------


def test_gunicorn_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("WEB_THREADS", "7")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["bind"] == "0.0.0.0:9123"
    assert (config["workers"], config["worker_class"], config["threads"]) == (3, "gevent", 7)
    assert config["worker_connections"] >= 10_000  # ten thousand waiting clients
    assert config["timeout"] == 30 and config["accesslog"] is None


def test_gunicorn_child_exit_marks_dead_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prometheus_client import multiprocess

    dead: list[int] = []
    monkeypatch.setattr(multiprocess, "mark_process_dead", dead.append)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    worker = type("Worker", (), {"pid": 4242})()

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    config["child_exit"](None, worker)
    assert dead == []
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config["child_exit"](None, worker)
    assert dead == [4242]


# --- docker-compose.yml -----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services(compose: dict) -> None:
    assert LONG_RUNNING | {"migrate"} <= set(compose["services"])


def test_compose_redis_persists_and_never_evicts(compose: dict) -> None:
    command = compose["services"]["redis"]["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert re.search(r"--appendonly\s+\"?yes", command)
    assert re.search(r"--maxmemory-policy\s+noeviction", command)


def test_compose_runs_exactly_one_beat(compose: dict) -> None:
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_compose_long_running_services_have_healthchecks(compose: dict) -> None:
    for name in LONG_RUNNING:
        assert compose["services"][name].get("healthcheck", {}).get("test"), name
    assert compose["services"]["migrate"]["restart"] == "no"


def test_compose_start_order_waits_for_health_and_migrations(compose: dict) -> None:
    services = compose["services"]
    for name in ("web", "worker", "worker_ai", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_is_production_and_requires_its_secrets(compose: dict) -> None:
    env = compose["services"]["web"]["environment"]
    assert env["CONVEYOR_ENV"] == "production"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]
    assert compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_compose_worker_pools_match_the_procfile(compose: dict) -> None:
    worker = compose["services"]["worker"]["command"]
    worker_ai = compose["services"]["worker_ai"]["command"]
    assert (option(worker, "-P"), option(worker, "-Q")) == (
        "prefork",
        "ledger,maintenance,webhooks",
    )
    assert (option(worker_ai, "-P"), option(worker_ai, "-Q")) == ("gevent", "ai")


def published_host_port(entry: str | int | dict) -> str | None:
    """The host side of a compose `ports` entry (short or long form), None when unpublished."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return None if published is None else str(published)
    # [ip:]host:container, or just container; the host part may hold ${VAR:-default}.
    host, colon, _container = str(entry).rpartition(":")
    return re.sub(r"^\d+(?:\.\d+){3}:", "", host) if colon else None


def test_compose_scales_web_and_workers(compose: dict) -> None:
    # `docker compose up --scale worker=3 --scale web=2`: a fixed container name
    # or a single host port would make the second replica fail to start.
    for name in ("web", "worker", "worker_ai"):
        service = compose["services"][name]
        assert "container_name" not in service, name
        for entry in service.get("ports", []):
            host = published_host_port(entry)
            assert host is None or re.fullmatch(r"\$\{\w+:-\d+-\d+\}|\d+-\d+", host), (name, entry)
    assert published_host_port(compose["services"]["web"]["ports"][0]) == "${WEB_PORTS:-8000-8009}"


def test_compose_celery_healthchecks_ping_their_own_node(compose: dict) -> None:
    for name in ("worker", "worker_ai", "beat"):
        service = compose["services"][name]
        node = option(service["command"], "-n")  # e.g. worker@%h
        assert node.endswith("@%h"), name
        probe = service["healthcheck"]["test"][-1]
        assert f"inspect ping -d {node.replace('%h', '$$HOSTNAME')}" in probe, name


# --- .env.example -----------------------------------------------------------------


def test_env_example_documents_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    required = {f.metadata["env"] for f in fields(Settings)} | {
        "PORT",
        "WEB_BIND_HOST",
        "FLOWER_ADDRESS",
        "WEB_CONCURRENCY",
        "WEB_THREADS",
        "WORKER_CONCURRENCY",
        "AI_WORKER_CONCURRENCY",
        "AI_WORKER_PREFETCH",
        "EVENTS_WORKER_CONNECTIONS",
        "PROMETHEUS_MULTIPROC_DIR",
        "POSTGRES_PASSWORD",
    }
    missing = sorted(required - documented)
    assert not missing, f"document these in .env.example (one comment line each): {missing}"


def test_readme_names_every_variable_and_the_configuration_page_explains_it() -> None:
    """Every variable a process reads is named in README and has a row in docs/configuration.md."""
    example = (ROOT / ".env.example").read_text()
    variables = {f.metadata["env"] for f in fields(Settings)} | set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    )
    readme = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", page, flags=re.MULTILINE))
    assert sorted(variables - readme) == [], "name these in README's Configuration"
    assert sorted(variables - rows) == [], "give these a row in docs/configuration.md"

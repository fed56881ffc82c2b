"""docker-compose.yml's `sentinel` profile: one master, two replicas, three sentinels, as written.

No Docker engine runs here (ops/compose and docs/compose.md run the stack
itself), so this reads the profile and runs what can run outside a
container: each sentinel's own shell script writes its configuration, and a
sentinel started from that file answers. Hostnames (`redis`, the replicas,
the sentinels) resolve only on compose's network.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from tests.ops.test_compose_shape import DOTENV, load_compose
from tests.support.processes import free_port, running_server

PROFILE = ("redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(DOTENV)


def test_the_profile_adds_two_replicas_and_three_sentinels(compose: dict) -> None:
    services = compose["services"]
    for name in PROFILE:
        service = services[name]
        assert service["profiles"] == ["sentinel"], name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
        volume = service["volumes"][0].split(":")[0]
        assert volume in compose["volumes"], f"{name}'s state is not on a named volume"
    # The base stack is unchanged: its services take no profile.
    assert "profiles" not in services["redis"] and "profiles" not in services["web"]


@pytest.mark.parametrize("name", ["redis-replica-1", "redis-replica-2"])
def test_each_replica_follows_redis_and_is_known_by_its_name(compose: dict, name: str) -> None:
    command = compose["services"][name]["command"]
    master = compose["services"]["redis"]["command"]
    assert command[: len(master)] == master  # the master's AOF and noeviction settings
    assert command[len(master) :] == [
        "--replicaof", "redis", "6379", "--replica-announce-ip", name,
    ]  # fmt: skip


def _sentinel_config(compose: dict, name: str, directory: Path, password: str = "") -> str:
    """What the sentinel's own script writes to /data/sentinel.conf (here: `directory`)."""
    service = compose["services"][name]
    script = service["command"][2].replace("/data/", f"{directory}/")
    script = script.replace('exec redis-server "$conf" --sentinel', 'cat "$conf"')
    env = {"HOSTNAME": service["hostname"], "REDIS_SENTINEL_PASSWORD": password, "PATH": "/bin"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["sentinel-1", "sentinel-2", "sentinel-3"])
def test_each_sentinel_writes_its_configuration_once(compose: dict, name: str, tmp_path) -> None:
    config = _sentinel_config(compose, name, tmp_path).splitlines()
    assert "sentinel monitor conveyor redis 6379 2" in config
    assert f"sentinel announce-ip {name}" in config
    assert {"sentinel announce-hostnames yes", "sentinel resolve-hostnames yes"} <= set(config)
    assert not any(line.startswith("requirepass") for line in config)
    # What the sentinel learned since is kept: an existing file is not rewritten.
    (tmp_path / "sentinel.conf").write_text("port 26379\n# learned\n")
    assert _sentinel_config(compose, name, tmp_path) == "port 26379\n# learned\n"


def test_a_sentinel_password_becomes_requirepass_and_a_sentinel_starts_from_the_file(
    compose: dict, tmp_path
) -> None:
    config = _sentinel_config(compose, "sentinel-1", tmp_path, password="s3cret")
    assert "requirepass s3cret" in config and "sentinel sentinel-pass s3cret" in config
    # Started from that file (on a loopback port of its own), it takes the configuration.
    port = free_port()
    path = tmp_path / "sentinel.conf"
    path.write_text(config.replace("port 26379", f"port {port}\nbind 127.0.0.1"))
    argv = ["redis-server", str(path), "--sentinel"]
    with running_server(argv, env={}, log_path=tmp_path / "sentinel.log", port=port):
        client = redis.Redis(port=port, password="s3cret", decode_responses=True)
        assert client.ping()
        assert client.sentinel_masters()["conveyor"]["port"] == 6379

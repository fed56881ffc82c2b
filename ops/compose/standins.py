"""Local stand-ins for the base images docker-compose.yml and the Dockerfile name.

Where `python:3.11-slim`, `postgres:16`, `redis:7` or `prom/prometheus` can be
pulled (or are already present and real), nothing is built. Where they cannot,
each is built from Debian bookworm's own packages on a debootstrap'd minbase
root (`docker import`), from the recipe in ops/compose/standins/<name>/, and
tagged with the real name, so the compose file and Dockerfile users get stay
as they are. A stand-in carries the label `org.conveyor.standin`; its recipe's
digest is a second label, and a changed recipe is rebuilt.

    python -m ops.compose.standins [SERVICE ...]    # prepare what compose (or those services) needs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.settings import ROOT
from ops.compose import host
from ops.compose.engine import STATE_DIR, apt_install, ensure_engine, run, say

SUITE = "bookworm"
BASE_TAG = f"conveyor-standin/debian:{SUITE}-minbase"
LABEL = "org.conveyor.standin"
RECIPE_LABEL = "org.conveyor.standin.recipe"
RECIPES_DIR = Path(__file__).parent / "standins"
PIP_CA_IN_IMAGE = "/etc/ssl/certs/conveyor-standin-pip.crt"
PULL_TIMEOUT = 120


@dataclass(frozen=True)
class Recipe:
    """How to stand in for one image: its recipe folder, and whether it carries pip's setup."""

    directory: str
    pip: bool = False


def recipe_for(image: str) -> Recipe | None:
    """The recipe for an image name, or None when Debian has nothing to stand in with."""
    repository, _, tag = image.partition(":")
    if repository == "python" and tag.startswith("3.11"):  # bookworm's python3 is 3.11
        return Recipe("python", pip=True)
    return {
        "postgres": Recipe("postgres"),
        "redis": Recipe("redis"),
        "prom/prometheus": Recipe("prometheus"),
    }.get(repository)


def base_images(services: Iterable[str] | None = None) -> list[str]:
    """The images the Dockerfile builds FROM and the compose services (or those named) run."""
    found = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.upper().startswith("FROM "):
            found.append(line.split()[1])
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    wanted = set(spec) if services is None else set(services)
    for name, service in spec.items():
        if name in wanted and "build" not in service and service.get("image"):
            found.append(service["image"])
    return list(dict.fromkeys(found))


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels ({} for none), or None when it is not present."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip() or "null") or {}


def pull(image: str) -> bool:
    """Whether `docker pull` brought the real image (fails fast where no registry answers)."""
    try:
        done = subprocess.run(
            ["docker", "pull", "--quiet", image],
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


# --- the debootstrap'd base ---------------------------------------------------------


def _apt_acquire_settings() -> dict[str, str]:
    """This machine's apt.conf.d files that only say how to fetch (Acquire::...): name -> text."""
    found = {}
    for path in sorted((host.APT_DIR / "apt.conf.d").glob("*")):
        lines = [
            line.strip()
            for line in path.read_text(errors="replace").splitlines()
            if line.strip() and not line.strip().startswith(("//", "#"))
        ]
        if lines and all(line.startswith("Acquire::") for line in lines):
            found[path.name] = path.read_text()
    return found


def build_base() -> None:
    """debootstrap --variant=minbase bookworm from this machine's mirror, then docker import."""
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    mirror = host.debian_mirror(SUITE)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=STATE_DIR))
    try:
        say(f"debootstrap --variant=minbase {SUITE} (the mirror this machine's apt uses)")
        argv = ["debootstrap", "--variant=minbase"]
        if mirror.keyring:
            argv.append(f"--keyring={mirror.keyring}")
        run([*argv, SUITE, str(rootfs), mirror.uri], timeout=1800)
        # The image's apt uses the same archive, its updates and security suites.
        suites = [s for s in host.debian_sources() if s.suite.split("-")[0] == SUITE]
        (rootfs / "etc/apt/sources.list").write_text(
            "".join(f"deb {s.uri} {s.suite} main\n" for s in suites)
        )
        for name, text in _apt_acquire_settings().items():
            (rootfs / "etc/apt/apt.conf.d" / name).write_text(text)
        (rootfs / "etc/apt/apt.conf.d/90conveyor-standin").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
        # No init system in a container: packages must not try to start services.
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        say(f"docker import -> {BASE_TAG}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        imported = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                f"LABEL {LABEL}={BASE_TAG}",
                "-",
                BASE_TAG,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def base_image_id() -> str:
    if image_labels(BASE_TAG) is None:
        build_base()
    return run(["docker", "image", "inspect", "--format", "{{.Id}}", BASE_TAG]).stdout.strip()


# --- one stand-in -------------------------------------------------------------------


def build_context(recipe: Recipe, into: Path) -> None:
    """The recipe's files, plus this machine's pip.conf and CA bundle where the recipe says so."""
    shutil.copytree(RECIPES_DIR / recipe.directory, into, dirs_exist_ok=True)
    if recipe.pip:
        setup = host.pip_setup()
        (into / "pip.conf").write_text(setup.pip_conf(PIP_CA_IN_IMAGE))
        if setup.ca_bundle is not None:
            shutil.copyfile(setup.ca_bundle, into / "ca-bundle.crt")
        else:
            (into / "ca-bundle.crt").write_text("")


def context_digest(context: Path, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure(image: str) -> str:
    """Make `image` present: real when it is or can be pulled, else a current stand-in."""
    labels = image_labels(image)
    if labels is not None and LABEL not in labels:
        return f"{image}: present (the real image)"
    if pull(image):
        return f"{image}: pulled (the real image)"
    recipe = recipe_for(image)
    if recipe is None:
        raise RuntimeError(f"{image} cannot be pulled here and Debian has no stand-in for it")
    base_id = base_image_id()
    with tempfile.TemporaryDirectory(dir=STATE_DIR) as scratch:
        context = Path(scratch)
        build_context(recipe, context)
        digest = context_digest(context, base_id)
        if labels is not None and labels.get(RECIPE_LABEL) == digest:
            return f"{image}: stand-in up to date (cannot be pulled here)"
        say(f"{image} cannot be pulled: building its stand-in from Debian {SUITE} packages")
        run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE={base_id}",
                "--label",
                f"{LABEL}={image}",
                "--label",
                f"{RECIPE_LABEL}={digest}",
                "--tag",
                image,
                str(context),
            ],
            # The classic builder: no buildx plugin is needed for a local FROM.
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            timeout=1800,
        )
    return f"{image}: stand-in built from Debian {SUITE} packages"


def prepare(services: Iterable[str] | None = None) -> list[str]:
    """Every base image the stack (or the services named) needs, present; one line each."""
    ensure_engine()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lines = [ensure(image) for image in base_images(services)]
    for line in lines:
        say(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", help="compose services (default: all of them)")
    args = parser.parse_args(argv)
    prepare(args.services or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What this machine says about its package sources, read at run time and never written down.

The stand-in images install Debian packages from the mirror this machine's apt
uses, and the stand-in python image carries the pip configuration and CA
bundle this machine's pip uses; both are read here, from the machine, each
time, so no host name or path of one machine lands in the repository.
"""

from __future__ import annotations

import configparser
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class DebianSource:
    """One `deb` source of the main archive: mirror URL, suite and the keyring that signs it."""

    uri: str
    suite: str
    keyring: str | None


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current = [], {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current = {}
            continue
        if line[0].isspace() and current:  # a continuation line
            last = next(reversed(current))
            current[last] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        current[key.strip().lower()] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def debian_sources(apt_dir: Path = APT_DIR) -> list[DebianSource]:
    """Every enabled `deb` source with component main, one-line and deb822 formats alike."""
    found: list[DebianSource] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.match(r"deb\s+(?:\[(?P<options>[^]]*)\]\s+)?(?P<rest>.+)", line)
            if not match:
                continue
            uri, suite, *components = match["rest"].split()
            options = dict(
                item.split("=", 1) for item in (match["options"] or "").split() if "=" in item
            )
            if "main" in components:
                found.append(DebianSource(uri, suite, options.get("signed-by")))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text()):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            if "main" not in stanza.get("components", "").split():
                continue
            signed_by = stanza.get("signed-by")
            keyring = signed_by if signed_by and signed_by.startswith("/") else None
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    found.append(DebianSource(uri, suite, keyring))
    return found


def debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> DebianSource:
    """The main archive's source for `suite` (not -updates, not -security)."""
    for source in debian_sources(apt_dir):
        if source.suite == suite:
            return source
    raise RuntimeError(
        f"no apt source for Debian {suite} (main) under {apt_dir}; "
        "debootstrap needs a mirror of the Debian archive"
    )


@dataclass
class PipSetup:
    """The parts of this machine's pip configuration that also work inside a container."""

    options: dict[str, str] = field(default_factory=dict)  # pip.conf [global] key -> value
    ca_bundle: Path | None = None

    def pip_conf(self, ca_path_in_image: str) -> str:
        """A pip.conf for the image: the network settings, the CA bundle at its path there."""
        config = configparser.ConfigParser(interpolation=None)
        config["global"] = dict(self.options)
        if self.ca_bundle is not None:
            config["global"]["cert"] = ca_path_in_image
        lines = ["[global]"] + [f"{key} = {value}" for key, value in config["global"].items()]
        return "\n".join(lines) + "\n"


# pip settings that describe how to reach the index; everything else (find-links
# to local folders, constraints files, caches) stays on the machine.
_PORTABLE_PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries")
_PIP_ENV = {
    "PIP_INDEX_URL": "index-url",
    "PIP_EXTRA_INDEX_URL": "extra-index-url",
    "PIP_TRUSTED_HOST": "trusted-host",
    "PIP_DEFAULT_TIMEOUT": "timeout",
    "PIP_TIMEOUT": "timeout",
    "PIP_RETRIES": "retries",
}


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def parse_pip_config_list(text: str) -> dict[str, str]:
    """`pip config list` output (`global.cert='...'`, `:env:.timeout='...'`) as key -> value."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"(?P<section>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'$", line.strip())
        if match:
            key = match["key"].replace("_", "-")
            key = "timeout" if key == "default-timeout" else key
            values[key] = match["value"]
    return values


def pip_setup(environ: dict[str, str] | None = None, listed: str | None = None) -> PipSetup:
    """This machine's pip index settings and the CA bundle pip verifies with.

    `listed` is `pip config list`'s output (asked of this interpreter's pip when None).
    """
    env = dict(os.environ if environ is None else environ)
    if listed is None:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        ).stdout
    config = parse_pip_config_list(listed)
    for name, key in _PIP_ENV.items():
        if env.get(name):
            config[key] = env[name]
    options: dict[str, str] = {}
    for key in _PORTABLE_PIP_KEYS:
        value = config.get(key)
        if not value:
            continue
        if key in ("index-url", "extra-index-url"):
            value = " ".join(url for url in value.split() if _is_remote(url))
            if not value:
                continue
        options[key] = value
    candidates = [
        config.get("cert"),
        env.get("PIP_CERT"),
        env.get("REQUESTS_CA_BUNDLE"),
        env.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        ssl.get_default_verify_paths().openssl_cafile,
    ]
    bundle = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    return PipSetup(options, bundle)

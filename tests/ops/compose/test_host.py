"""ops/compose/host.py: the apt sources and pip setup, parsed as apt and pip write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.compose import host


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_and_one_line_sources_both_count(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list.d/debian.sources",
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /keys/archive.gpg\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n",
    )
    write(
        tmp_path, "sources.list", "deb [signed-by=/k.gpg] http://other.example/debian trixie main\n"
    )
    sources = host.debian_sources(tmp_path)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://other.example/debian", "trixie"),
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
    ]
    mirror = host.debian_mirror("bookworm", tmp_path)
    assert mirror.keyring == "/keys/archive.gpg"
    assert host.debian_mirror("trixie", tmp_path).keyring == "/k.gpg"


def test_no_source_for_the_suite_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "deb http://mirror.example/debian trixie contrib\n")
    with pytest.raises(RuntimeError, match="bookworm"):
        host.debian_mirror("bookworm", tmp_path)


def test_pip_setup_keeps_what_works_in_a_container(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    listed = (
        "global.cert='/nowhere/ca.pem'\n"
        "global.constraint='/srv/pip/constraints.txt'\n"
        "global.extra-index-url='file:///srv/local/simple https://extra.example/simple'\n"
        "global.find-links='/srv/wheels'\n"
        ":env:.default-timeout='180'\n"
    )
    assert host.parse_pip_config_list(listed)["timeout"] == "180"
    setup = host.pip_setup(
        {"PIP_INDEX_URL": "https://index.example/simple", "SSL_CERT_FILE": str(bundle)},
        listed=listed,
    )
    assert setup.options == {
        "index-url": "https://index.example/simple",
        "extra-index-url": "https://extra.example/simple",
        "timeout": "180",
    }
    assert setup.ca_bundle == bundle  # the configured cert does not exist; the next one does
    conf = setup.pip_conf("/etc/ssl/certs/in-image.crt")
    assert "cert = /etc/ssl/certs/in-image.crt" in conf
    assert "constraint" not in conf and "find-links" not in conf and "/srv/" not in conf

"""ops/compose/stack.py: the secrets compose requires, made once and kept; the env file it reads."""

from __future__ import annotations

from pathlib import Path

from ops.compose import stack


def test_generated_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    first = stack.generated_secrets(path, stack.REQUIRED)
    assert set(first) == set(stack.REQUIRED)
    assert path.stat().st_mode & 0o777 == 0o600
    # PostgreSQL keeps the password of its first start: a second run must not change it.
    assert stack.generated_secrets(path, stack.REQUIRED) == first
    assert stack.read_env_file(path) == first
    assert first["POSTGRES_PASSWORD"].isalnum()  # it goes into DATABASE_URL
    assert first["FLOWER_BASIC_AUTH"].startswith("ops:")


def test_env_file_lines_are_read_as_compose_reads_them(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\n\nexport SECRET_KEY='abc def'\nWEB_PORTS=9000-9009\nBROKEN\n")
    assert stack.read_env_file(path) == {"SECRET_KEY": "abc def", "WEB_PORTS": "9000-9009"}


def test_a_free_block_skips_ports_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        start = stack.free_block(port, 3, set())
        assert port not in range(start, start + 3)
        assert stack.spelled(start, 3) == f"{start}-{start + 2}"

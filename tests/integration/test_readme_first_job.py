"""README's first job, run as written: its CLI and curl blocks against a real stack, as a newcomer.

The blocks are found by their marker comments (`<!-- first-job:cli -->`,
`<!-- first-job:curl -->`) in README.md, or in docs/first-job.md until the
README carries them. Each runs in bash exactly as written; the only change is
where the server is (`localhost:8000` becomes the test's web, and the CLI's
default URL comes from CONVEYOR_URL). Lines starting with `#` are the
output the block promises, in that order (`…` is anything); the stack logs
in with LOGIN_GENERATES_TRANSACTIONS on, as `make run` does, so the balance
the reader sees is the seed batch plus their credit, and the test checks
that it rose by exactly that credit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from client import ConveyorClient
from infra.settings import ROOT
from tests.support.cli import cli_environment
from tests.support.webstack import served_stack

pytestmark = pytest.mark.integration

MARKER = "<!-- first-job:{} -->"
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
PASSWORD = "correct horse battery"  # as the blocks spell it


def first_job_block(name: str) -> tuple[Path, str]:
    """The fenced block after `<!-- first-job:NAME -->`: README.md's, else docs/first-job.md's."""
    for page in (ROOT / "README.md", ROOT / "docs" / "first-job.md"):
        text = page.read_text(encoding="utf-8")
        marker = MARKER.format(name)
        if marker in text:
            found = BLOCK.search(text, text.index(marker))
            assert found, f"no ```sh block after {marker} in {page.name}"
            return page, found.group(1)
    raise AssertionError(f"no {MARKER.format(name)} in README.md or docs/first-job.md")


def expected_lines(block: str) -> list[re.Pattern]:
    """The `# ...` lines of `block` as patterns: literal text, `…` for anything."""
    patterns = []
    for line in block.splitlines():
        if line.startswith("#"):
            shown = line[1:].removeprefix(" ")
            parts = (re.escape(part) for part in shown.split("…"))
            patterns.append(re.compile(".*".join(parts)))
    return patterns


def assert_in_order(output: str, patterns: list[re.Pattern]) -> None:
    """Every pattern matches a whole output line, each after the one before."""
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for pattern in patterns:
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        assert at < len(lines), f"never printed (in order): {pattern.pattern!r}\n---\n{output}"
        at += 1


def run_block(block: str, base_url: str, config_home: Path, cwd: Path) -> str:
    script = block.replace("localhost:8000", base_url.removeprefix("http://"))
    env = cli_environment(base_url, config_home)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def newcomer_stack(settings, redis_client, tmp_path_factory):
    """web, events and a worker as `make run` has them for a login: seed transactions on."""
    log_dir = tmp_path_factory.mktemp("first-job")
    with served_stack(settings, redis_client, log_dir, login_generates_transactions=True) as stack:
        yield stack


@pytest.fixture
def checkout(tmp_path) -> Path:
    """Where a block runs: a directory with the checkout's `.venv`, as in the checkout itself."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def _balance_after_the_credit(stack, username: str, credit: int) -> int:
    """The balance the credit left, after checking it rose by exactly the credit."""
    with ConveyorClient(stack.url) as api:
        api.login(username, PASSWORD)
        entries = sorted(api.transactions(limit=100)["items"], key=lambda item: item["id"])
    (index,) = [i for i, e in enumerate(entries) if e["type"] == "credit" and e["amount"] == credit]
    before = entries[index - 1]["balance_after"] if index else 0
    assert entries[index]["balance_after"] == before + credit
    assert len(entries) > 1  # the login's seed batch posted too: the reason it is not 500
    return entries[index]["balance_after"]


def test_the_first_job_with_the_cli_runs_as_written(newcomer_stack, checkout, tmp_path):
    _page, block = first_job_block("cli")
    output = run_block(block, newcomer_stack.url, tmp_path / "config", checkout)
    assert_in_order(output, expected_lines(block))
    shown = re.search(r'^  "balance": (\d+),$', output, re.M)
    assert shown and int(shown.group(1)) == _balance_after_the_credit(newcomer_stack, "ada", 500)


def test_the_first_job_with_curl_runs_as_written(newcomer_stack, checkout, tmp_path):
    _page, block = first_job_block("curl")
    output = run_block(block, newcomer_stack.url, tmp_path / "config", checkout)
    assert_in_order(output, expected_lines(block))
    shown = re.findall(r'"balance":(\d+)', output)
    assert shown and int(shown[-1]) == _balance_after_the_credit(newcomer_stack, "bob", 500)

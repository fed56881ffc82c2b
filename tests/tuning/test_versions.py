"""The version tripwire: each adjustment declares what it was written against; that is installed.

When a library is upgraded this fails, naming the adjustments to re-check
(their modules say which test breaks); until then the process logs an error
at start-up and runs that library's stock path (tuning.check).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import tuning
from tuning import registry

ROOT = Path(__file__).resolve().parents[2]
# Every third-party library an adjustment reaches into.
WATCHED = (
    "gunicorn", "gevent", "kombu", "celery", "redis", "hiredis", "flask", "werkzeug", "flower",
    "tornado", "sqlalchemy", "opentelemetry-instrumentation-sqlalchemy",
)  # fmt: skip


@pytest.mark.parametrize("adjustment", tuning.ADJUSTMENTS, ids=lambda a: a.name)
def test_each_adjustment_was_written_against_the_installed_libraries(adjustment):
    assert tuning.mismatches(adjustment) == [], (
        f"{adjustment.module}: re-check it against the new release (its docstring names the "
        "test that breaks), then update its versions in tuning/registry.py"
    )


def test_every_watched_library_is_declared_by_what_adjusts_it():
    declared = {name for a in tuning.ADJUSTMENTS for name, _version in a.targets}
    assert set(WATCHED) <= declared


def test_the_declared_versions_are_the_pinned_ones():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.split("[")[0].lower()] = version
    for adjustment in tuning.ADJUSTMENTS:
        for name, version in adjustment.targets:
            assert pins.get(name) == version, (
                f"{name} is not pinned at {version} in requirements.txt"
            )


def test_a_changed_library_turns_its_adjustment_off_loudly(monkeypatch, caplog):
    real = registry.installed_version
    monkeypatch.setattr(
        registry, "installed_version", lambda name: "99.0" if name == "gunicorn" else real(name)
    )
    monkeypatch.setattr(registry, "STATE", {})
    selection = tuning.Selection.parse("on")
    with caplog.at_level(logging.ERROR, logger="tuning.registry"):
        assert tuning.check(selection, "gunicorn_one_write") is False
        assert tuning.check(selection, "gunicorn_one_write") is False  # logged once
        assert tuning.check(selection, "kombu_client_reuse") is True  # other libraries unaffected
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "gunicorn 99.0 (written against 27.0.1)" in errors[0]
    assert "CONVEYOR_TUNING=-gunicorn_one_write" in errors[0]
    assert registry.STATE["gunicorn_one_write"] == "off: version"


def test_a_changed_gunicorn_leaves_the_web_worker_on_stock_gunicorn(monkeypatch):
    from gunicorn.http import wsgi as gunicorn_wsgi

    from tuning import gunicorn_one_write

    gunicorn_one_write.uninstall()
    real = registry.installed_version
    monkeypatch.setattr(
        registry, "installed_version", lambda name: "99.0" if name == "gunicorn" else real(name)
    )
    monkeypatch.setattr(registry, "STATE", {})
    selection = tuning.Selection.parse("-collector,-gunicorn_balance,-redis_zero_poll")
    stock = gunicorn_wsgi.Response.write
    try:
        tuning.install_web_worker(object(), selection)
        assert gunicorn_wsgi.Response.write is stock
        assert registry.STATE["gunicorn_one_write"] == "off: version"
    finally:
        gunicorn_one_write.uninstall()

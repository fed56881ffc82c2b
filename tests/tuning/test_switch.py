"""CONVEYOR_TUNING: what `on`, `off` and named lists select; each module follows the rules."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import pytest

import tuning
from infra.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
SPEED = {a.name for a in tuning.ADJUSTMENTS if a.purpose == tuning.SPEED}
REPAIRS = {a.name for a in tuning.ADJUSTMENTS if a.purpose == tuning.REPAIR}


def test_on_selects_everything_and_off_keeps_only_the_repairs():
    assert tuning.Selection.parse(None).on == SPEED | REPAIRS
    assert tuning.Selection.parse("on").on == SPEED | REPAIRS
    assert tuning.Selection.parse("off").on == REPAIRS
    assert {
        "kombu_detached_guard", "broker_leases", "prometheus_mode", "flower_metrics_auth"
    } == REPAIRS  # fmt: skip
    assert tuning.Selection.parse("off").all_speed_off


def test_names_turn_single_adjustments_on_and_off():
    assert tuning.Selection.parse("-fast_publish").on == (SPEED | REPAIRS) - {"fast_publish"}
    assert tuning.Selection.parse("off,+collector").on == REPAIRS | {"collector"}
    assert tuning.Selection.parse("off,-broker_leases").on == REPAIRS - {"broker_leases"}
    assert tuning.Selection.parse(" OFF , +Collector ").on == REPAIRS | {"collector"}


def test_an_unknown_name_is_a_configuration_error():
    with pytest.raises(tuning.TuningError, match="no adjustment named 'fastpublish'"):
        tuning.Selection.parse("-fastpublish")
    with pytest.raises(ConfigError, match="CONVEYOR_TUNING"):
        Settings.from_env({"CONVEYOR_TUNING": "-nothing"})


def test_broker_fast_publish_false_turns_off_only_the_fast_publish():
    settings = Settings.from_env({"BROKER_FAST_PUBLISH": "false"})
    assert tuning.selection_of(settings).on == (SPEED | REPAIRS) - {"fast_publish"}


def test_every_module_of_the_room_is_listed_and_every_listed_module_exists():
    modules = {f"tuning.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "tuning")])}
    listed = {a.module for a in tuning.ADJUSTMENTS}
    helpers = {"tuning.registry", "tuning.redis_reads", "tuning.redis_pipelines"}
    assert listed <= modules
    assert modules - listed == helpers  # each helper's docstring names the adjustment it serves


@pytest.mark.parametrize("adjustment", tuning.ADJUSTMENTS, ids=lambda a: a.name)
def test_each_module_says_what_why_which_versions_which_test_and_how_to_turn_it_off(adjustment):
    path = ROOT / (adjustment.module.replace(".", "/") + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    for section in ("Changes:", "Why:", "Written against:", "Breaks:", "Off:"):
        assert section in doc, f"{path.name}: no {section!r}"
    assert f"CONVEYOR_TUNING=-{adjustment.name}" in doc
    for distribution, version in adjustment.targets:
        assert f"{distribution} {version}" in doc, f"{path.name}: says no {distribution} {version}"
    tests = re.findall(r"tests/[\w/]+\.py", doc)
    assert tests, f"{path.name} names no test"
    for test in tests:
        assert (ROOT / test).exists(), f"{path.name} names {test}, which does not exist"


def test_nothing_is_adjusted_by_importing_the_room():
    """Importing every module of tuning/ patches nothing: the entry points install them."""
    import importlib

    from gunicorn.http import wsgi as gunicorn_wsgi
    from kombu.transport import redis as kombu_redis

    before = (
        gunicorn_wsgi.Response.write,
        gunicorn_wsgi.Response.process_headers,
        kombu_redis.Channel.conn_or_acquire,
        kombu_redis.Channel._connparams,
    )
    for module in pkgutil.iter_modules([str(ROOT / "tuning")]):
        importlib.import_module(f"tuning.{module.name}")
    after = (
        gunicorn_wsgi.Response.write,
        gunicorn_wsgi.Response.process_headers,
        kombu_redis.Channel.conn_or_acquire,
        kombu_redis.Channel._connparams,
    )
    assert after == before

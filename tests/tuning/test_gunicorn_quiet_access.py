"""gunicorn's logger without its access line (tuning/gunicorn_quiet_access.py), against its own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gunicorn.config import Config
from gunicorn.glogging import Logger

from tests.support.environment import tuning_on
from tuning.gunicorn_quiet_access import QuietAccessLogger

ROOT = Path(__file__).resolve().parents[2]


def _config() -> Config:
    spec = importlib.util.spec_from_file_location(
        "conveyor_gunicorn_conf", ROOT / "gunicorn.conf.py"
    )
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    cfg = Config()
    for name in ("logconfig_dict", "accesslog", "errorlog", "loglevel"):
        cfg.set(name, getattr(conf, name))
    if hasattr(conf, "logger_class"):
        cfg.set("logger_class", conf.logger_class)
    return cfg


def test_gunicorns_own_logger_turns_access_logging_on_for_the_config():
    # What the adjustment exists for: with gunicorn.conf.py's logconfig_dict,
    # stock gunicorn computes access lines (only to discard them).
    assert Logger(_config())._compute_access_log_enabled() is True


def test_the_quiet_logger_never_computes_an_access_line():
    logger = QuietAccessLogger(_config())
    assert logger.access_log_enabled is False
    assert logger.access(None, None, {}, None) is None


def test_gunicorn_conf_names_it_only_when_it_is_on():
    assert (_config().logger_class is QuietAccessLogger) == tuning_on("gunicorn_quiet_access")

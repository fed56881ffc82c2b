"""The list of adjustments, the CONVEYOR_TUNING selection and the version tripwire (see tuning/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

SPEED = "speed"
REPAIR = "repair"


@dataclass(frozen=True)
class Adjustment:
    """One adjustment: its switch name, module, purpose and the versions it was written against."""

    name: str
    module: str
    purpose: str  # SPEED or REPAIR
    targets: tuple[tuple[str, str], ...]  # (distribution, version) pairs
    summary: str


def _targets(**versions: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(versions.items()))


# The versions pinned in requirements.txt when each adjustment was last checked.
GUNICORN = "27.0.1"
GEVENT = "26.9.0"
REDIS = "8.1.0"
HIREDIS = "3.5.0"
KOMBU = "5.7.0"
CELERY = "5.7.0"
FLASK = "3.1.3"
WERKZEUG = "3.1.9"
PROMETHEUS_CLIENT = "0.26.0"
HTTPX = "0.28.1"
FLOWER = "2.2.0"
TORNADO = "6.6.1"
SQLALCHEMY = "2.1.9"
OTEL_INSTRUMENTATION = "0.66b1"

ADJUSTMENTS: tuple[Adjustment, ...] = (
    Adjustment(
        "gunicorn_one_write", "tuning.gunicorn_one_write", SPEED, _targets(gunicorn=GUNICORN),
        "a response's head and first body bytes in one sendall",
    ),
    Adjustment(
        "gunicorn_trusted_headers", "tuning.gunicorn_trusted_headers", SPEED,
        _targets(gunicorn=GUNICORN),
        "the fixed security headers checked by gunicorn once per process, not per response",
    ),
    Adjustment(
        "gunicorn_quiet_access", "tuning.gunicorn_quiet_access", SPEED, _targets(gunicorn=GUNICORN),
        "gunicorn's access line not formatted only to be discarded",
    ),
    Adjustment(
        "gunicorn_balance", "tuning.gunicorn_balance", SPEED,
        _targets(gunicorn=GUNICORN, gevent=GEVENT),
        "kept-alive connections spread evenly over the gevent web workers",
    ),
    Adjustment(
        "redis_zero_poll", "tuning.redis_zero_poll", SPEED,
        _targets(redis=REDIS, hiredis=HIREDIS, gevent=GEVENT),
        "redis-py's zero-timeout readiness check on the OS poll() in gevent processes",
    ),
    Adjustment(
        "redis_own_connections", "tuning.redis_connections", SPEED,
        _targets(redis=REDIS, hiredis=HIREDIS),
        "the poll's HMGET and the submit flush's pipeline on connections of their own",
    ),
    Adjustment(
        "ai_plain_http", "tuning.ai_plain_http", SPEED, _targets(httpx=HTTPX),
        "the AI provider's POSTs on plain keep-alive http.client connections, not httpx",
    ),
    Adjustment(
        "fast_publish", "tuning.celery_fast_publish", SPEED, _targets(celery=CELERY, kombu=KOMBU),
        "a job message written as Celery's envelope with one LPUSH, not send_task",
    ),
    Adjustment(
        "kombu_client_reuse", "tuning.kombu_redis", SPEED, _targets(kombu=KOMBU, redis=REDIS),
        "one redis-py client per kombu channel instead of one per operation",
    ),
    Adjustment(
        "ledger_batches", "tuning.celery_ledger_batches", SPEED,
        _targets(celery=CELERY, kombu=KOMBU),
        "ledger.transaction messages gathered by the consumer and posted in batches",
    ),
    Adjustment(
        "flask_routing", "tuning.flask_routing", SPEED, _targets(flask=FLASK, werkzeug=WERKZEUG),
        "Flask's per-request answers (ensure_sync, URL adapter, rule match) remembered",
    ),
    Adjustment(
        "accepted_template", "tuning.flask_accepted", SPEED,
        _targets(flask=FLASK, werkzeug=WERKZEUG),
        "the 202's body filled into a template and its Location quoted once per mount point",
    ),
    Adjustment(
        "otel_sqlalchemy_pool", "tuning.otel_sqlalchemy_pool", SPEED,
        _targets(sqlalchemy=SQLALCHEMY,
                 **{"opentelemetry-instrumentation-sqlalchemy": OTEL_INSTRUMENTATION}),
        "with tracing on, no pool-usage listeners feeding a meter nothing exports",
    ),
    Adjustment(
        "collector", "tuning.collector", SPEED, (),
        "CPython's cyclic collector frozen after start-up and run less often",
    ),
    Adjustment(
        "kombu_detached_guard", "tuning.kombu_detached_guard", REPAIR, _targets(kombu=KOMBU),
        "a worker survives Redis dying while it holds messages (kombu's AttributeError)",
    ),
    Adjustment(
        "prometheus_mode", "tuning.prometheus_mode", REPAIR,
        _targets(**{"prometheus-client": PROMETHEUS_CLIENT}),
        "a prefork worker's children count their task metrics into the files it serves",
    ),
    Adjustment(
        "broker_leases", "tuning.broker_leases", REPAIR, _targets(kombu=KOMBU, celery=CELERY),
        "leases on held Redis messages: a dead worker's jobs come back in minutes",
    ),
    Adjustment(
        "flower_metrics_auth", "tuning.flower_metrics_auth", REPAIR,
        _targets(flower=FLOWER, tornado=TORNADO),
        "Flower's /metrics behind its basic auth, like every other Flower page",
    ),
)  # fmt: skip

BY_NAME = {adjustment.name: adjustment for adjustment in ADJUSTMENTS}


class TuningError(ValueError):
    """CONVEYOR_TUNING names something that is not an adjustment."""


@dataclass(frozen=True)
class Selection:
    """Which adjustments a process applies, parsed from CONVEYOR_TUNING."""

    on: frozenset[str]

    @classmethod
    def parse(cls, value: str | None) -> Selection:
        """`on`, `off`, and `+name`/`-name` (or bare names, meaning `+`), comma-separated."""
        chosen = {a.name for a in ADJUSTMENTS}
        for raw in (value or "on").split(","):
            token = raw.strip().lower()
            if not token or token in ("on", "true", "1", "yes"):
                continue
            if token in ("off", "false", "0", "no", "stock"):
                chosen = {a.name for a in ADJUSTMENTS if a.purpose == REPAIR}
                continue
            sign, name = (token[0], token[1:]) if token[0] in "+-" else ("+", token)
            if name not in BY_NAME:
                known = ", ".join(sorted(BY_NAME))
                raise TuningError(f"CONVEYOR_TUNING: no adjustment named {name!r} (known: {known})")
            if sign == "+":
                chosen.add(name)
            else:
                chosen.discard(name)
        return cls(frozenset(chosen))

    def __contains__(self, name: str) -> bool:
        if name not in BY_NAME:
            raise KeyError(name)
        return name in self.on

    @property
    def all_speed_off(self) -> bool:
        return not any(BY_NAME[name].purpose == SPEED for name in self.on)


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def mismatches(adjustment: Adjustment) -> list[str]:
    """How the installed libraries differ from what `adjustment` was written against."""
    found = []
    for distribution, version in adjustment.targets:
        installed = installed_version(distribution)
        if installed != version:
            found.append(f"{distribution} {installed or 'missing'} (written against {version})")
    return found


# What each adjustment ended up as in this process: "on", or why it is off.
STATE: dict[str, str] = {}


def check(selection: Selection, name: str) -> bool:
    """Whether this process should apply `name`: selected, and its targets at their versions.

    A version mismatch is logged as an error (once per process and name) and
    answers False, so the caller runs the stock path.
    """
    if name not in selection:
        STATE.setdefault(name, "off")
        return False
    wrong = mismatches(BY_NAME[name])
    if wrong:
        if STATE.get(name) != "off: version":
            log.error(
                "tuning: %s not applied, the stock path runs instead: %s; re-check it "
                "(tuning/%s.py) or turn it off with CONVEYOR_TUNING=-%s",
                name, "; ".join(wrong), BY_NAME[name].module.rpartition(".")[2], name,
            )  # fmt: skip
        STATE[name] = "off: version"
        return False
    return True


def refused(name: str, reason: str) -> None:
    """An adjustment found its target not shaped as it expects: say so, run the stock path."""
    log.error("tuning: %s not applied, the stock path runs instead: %s", name, reason)
    STATE[name] = f"off: {reason}"


def applied(name: str) -> None:
    STATE[name] = "on"


def summary() -> str:
    """One line of what this process applied and what it left off, and why."""
    on = sorted(name for name, state in STATE.items() if state == "on")
    off = sorted(f"{name} ({state})" for name, state in STATE.items() if state != "on")
    return f"on: {', '.join(on) or 'none'}; off: {', '.join(off) or 'none'}"


def selection_of(settings: Any) -> Selection:
    """The selection a Settings object carries (CONVEYOR_TUNING, BROKER_FAST_PUBLISH)."""
    selection = Selection.parse(getattr(settings, "tuning", "on"))
    if not getattr(settings, "broker_fast_publish", True):
        selection = Selection(selection.on - {"fast_publish"})
    return selection


def enabled(settings: Any, name: str) -> bool:
    """Whether a process built from `settings` applies adjustment `name` (see `check`)."""
    return check(selection_of(settings), name)

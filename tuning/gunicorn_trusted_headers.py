"""gunicorn's header checks run once per process for the fixed headers every response carries.

Changes: `gunicorn.http.wsgi.Response.process_headers` passes the trailing
header tuples registered with `trust` (these very objects, by identity) without
checking them again; everything before them is checked by gunicorn as before.
A header name registered with `trust_leading` (that very string object) is
passed unchecked too when it heads the list with a value of ASCII letters and
digits, which gunicorn's checks always pass unchanged: the web's
`X-Trace-Id`, whose value (a trace id in hex) differs on every response.

Why: gunicorn checks every response header against two regular expressions
and a list of hop-by-hop names, about half a microsecond a header, and the
fixed security headers (api/hardening.py) are most of a small response's
headers. They are checked once, by gunicorn's own code, when trusted; a
header a response built itself is always checked (docs/benchmarks.md).

Written against: gunicorn 27.0.1 (`process_headers`, and the Response
attributes it sets: `headers`, `response_length`, `upgrade`).
Breaks: tests/tuning/test_gunicorn_trusted_headers.py.
Off: `CONVEYOR_TUNING=-gunicorn_trusted_headers` (or `off`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

_TRUSTED: dict[int, tuple[str, str]] = {}
# The one header name (by identity) passed unchecked at the head of the list, or None.
_LEADING: list[str | None] = [None]
_ORIGINAL = "_conveyor_original"


def install() -> bool:
    """Make gunicorn's Response skip the trusted pairs' checks (once); False without gunicorn."""
    try:
        from gunicorn.http import wsgi as gunicorn_wsgi
    except ImportError:
        return False
    current = gunicorn_wsgi.Response.process_headers
    if getattr(current, _ORIGINAL, None) is None:
        gunicorn_wsgi.Response.process_headers = _skipping_trusted(current)
    return True


def uninstall() -> None:
    """gunicorn's own `process_headers` again (tests)."""
    from gunicorn.http import wsgi as gunicorn_wsgi

    original = getattr(gunicorn_wsgi.Response.process_headers, _ORIGINAL, None)
    if original is not None:
        gunicorn_wsgi.Response.process_headers = original


def trust(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Let gunicorn's Response pass these header tuples (these objects) without re-checking them.

    A pair is trusted only if gunicorn's own `process_headers` keeps it
    unchanged and with no other effect (so never Content-Length, a hop-by-hop
    header, or anything it would refuse or strip). Returns the trusted pairs;
    they skip the check only once `install` has run (the web's post_worker_init).
    """
    if "gunicorn.http.wsgi" not in sys.modules:
        return []  # not served by gunicorn: nothing to skip
    from gunicorn.http import wsgi as gunicorn_wsgi

    current = gunicorn_wsgi.Response.process_headers
    original = getattr(current, _ORIGINAL, current)
    trusted = [pair for pair in pairs if _kept_as_is(original, pair)]
    for pair in trusted:
        _TRUSTED[id(pair)] = pair  # held here, so the id is never reused
    return trusted


def trust_leading(name: str) -> bool:
    """Let gunicorn pass a first header named by this very string with an alphanumeric value.

    For a header whose value changes on every response but is always ASCII
    letters and digits (a hex id). Refused (False) for a name gunicorn's own
    `process_headers` would read, drop or refuse.
    """
    if "gunicorn.http.wsgi" not in sys.modules:
        return False
    from gunicorn.http import wsgi as gunicorn_wsgi

    current = gunicorn_wsgi.Response.process_headers
    original = getattr(current, _ORIGINAL, current)
    if type(name) is not str or not _kept_as_is(original, (name, "0123456789abcdefABCDEF")):
        return False
    _LEADING[0] = name
    return True


def _kept_as_is(process_headers: Callable[..., None], pair: tuple[str, str]) -> bool:
    if type(pair) is not tuple or len(pair) != 2 or not all(type(part) is str for part in pair):
        return False
    probe = _ResponseProbe()
    before = dict(vars(probe))
    try:
        process_headers(probe, [pair])
    except Exception:
        return False
    after = dict(vars(probe))
    kept = after.pop("headers")
    before.pop("headers")
    return after == before and kept == [pair]


class _ResponseProbe:
    """What gunicorn's process_headers reads and writes on its Response."""

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.response_length: int | None = None
        self.upgrade = False


def _skipping_trusted(original: Callable[..., None]) -> Callable[..., None]:
    def process_headers(self: Any, headers: Any) -> None:
        if type(headers) is not list:
            return original(self, headers)
        trusted = _TRUSTED
        end = cut = len(headers)
        start = 0
        if end:
            first = headers[0]
            if type(first) is tuple and len(first) == 2 and first[0] is _LEADING[0]:
                value = first[1]
                # Letters and digits only: nothing gunicorn would refuse, strip or read.
                if type(value) is str and value.isascii() and value.isalnum():
                    start = 1
        while cut > start and id(headers[cut - 1]) in trusted:
            cut -= 1
        if cut == end and not start:
            return original(self, headers)
        if start:
            self.headers.append(headers[0])
        original(self, headers[start:cut])
        self.headers.extend(headers[cut:])
        return None

    setattr(process_headers, _ORIGINAL, original)
    process_headers.__doc__ = original.__doc__
    return process_headers

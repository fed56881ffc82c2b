"""The 202 of a submission filled into a template, its Location quoted once per mount point.

Changes: instead of `app.json.response(...)` and werkzeug's Location
handling, the 202's body is formatted from a template of the app's compact
JSON and a werkzeug Response subclass overrides `get_wsgi_headers` to add a
Location that is already a URI (its part before the job id converted by
`iri_to_uri` once per mount point).

Why: every submission answers one; werkzeug runs every Location through
`iri_to_uri` (a URL parse and re-quote) and the JSON provider walks the dict
(docs/benchmarks.md, "submit"). Byte for byte what Flask and werkzeug give;
an app whose JSON provider is configured otherwise takes Flask's path.

Written against: flask 3.1.3 (DefaultJSONProvider's options), werkzeug 3.1.9
(`Response.get_wsgi_headers`).
Breaks: tests/api/test_api_tasks.py (the 202 against app.json.response and
werkzeug's Location, odd mount points).
Off: `CONVEYOR_TUNING=-accepted_template` (or `off`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.urls import iri_to_uri


def response(app: Flask, script_root: str, status_path: str, kind: str, task_id: str) -> Any:
    """The 202 for `task_id`, or None when the app's JSON is not what the template writes."""
    if not _plain_json(app):
        return None
    location, url_json = _status_url_parts(script_root, status_path)
    accepted = _Accepted(
        f'{{"task_id":"{task_id}","kind":{_json_string(kind)},"state":"PENDING",'
        f'"status_url":{url_json}{task_id}"}}\n',
        status=202,
        mimetype=app.json.mimetype,  # type: ignore[attr-defined]
    )
    accepted.location_uri = location + task_id
    return accepted


class _Accepted(Response):
    """A 202 whose Location (already a URI) is added as it goes out.

    werkzeug would run every Location through `iri_to_uri` on every response
    (a URL parse and re-quote); the status URL's part before the job id is
    converted once per mount point instead (`_status_url_parts`).
    """

    location_uri = ""

    def get_wsgi_headers(self, environ: dict[str, Any]) -> Any:
        headers = super().get_wsgi_headers(environ)
        headers["Location"] = self.location_uri
        return headers


def _plain_json(app: Flask) -> bool:
    """The app's JSON is what the template writes: compact, keys in order (api/__init__.py)."""
    provider = app.json
    return (
        type(provider) is DefaultJSONProvider
        and not provider.sort_keys
        and provider.ensure_ascii
        and (provider.compact or (provider.compact is None and not app.debug))
    )


@lru_cache(maxsize=256)
def _status_url_parts(script_root: str, status_path: str) -> tuple[str, str]:
    """For a mount point: the status URL's prefix as a URI, and as an open JSON string."""
    prefix = f"{script_root}{status_path}"
    return iri_to_uri(prefix), json.dumps(prefix)[:-1]


@lru_cache(maxsize=64)
def _json_string(value: str) -> str:
    return json.dumps(value)

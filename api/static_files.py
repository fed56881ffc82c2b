"""Serving the pages' files: a fixed table of names to paths, nothing built from input."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flask import Response, send_file

from api.errors import ApiError

PAGES = Path(__file__).resolve().parent / "pages"


def serve_asset(assets: Mapping[str, Path], name: str, max_age: int) -> Response:
    """The file `assets` names `name`, publicly cacheable for `max_age` seconds; else 404."""
    path = assets.get(name)
    if path is None:
        raise ApiError(404, "not_found", "no such file")
    response = send_file(path, max_age=max_age)
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response

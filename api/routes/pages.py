"""GET /: the jobs page (static HTML and JavaScript, no build step) and its two files."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_file

from api.errors import ApiError
from api.hardening import JOBS_PAGE_CSP, page_policy
from api.limits import unlimited
from api.openapi import PlainText, documented

PAGES = Path(__file__).resolve().parent.parent / "pages"
ASSETS = {"app.js": PAGES / "app.js", "app.css": PAGES / "app.css"}
ASSET_MAX_AGE = 300

bp = Blueprint("pages", __name__)


@bp.get("/")
@unlimited
@documented(
    "The jobs page: sign in, submit a demo job, follow your jobs live",
    auth="none",
    responses={200: PlainText("text/html")},
    tags=("pages",),
)
def jobs_page() -> Response:
    return page_policy(send_file(PAGES / "index.html", mimetype="text/html"), JOBS_PAGE_CSP)


@bp.get("/assets/<name>")
@unlimited
@documented(
    "A file of the jobs page",
    auth="none",
    responses={200: PlainText("application/octet-stream")},
    tags=("pages",),
)
def page_asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise ApiError(404, "not_found", "no such file")
    response = send_file(path, max_age=ASSET_MAX_AGE)
    response.headers["Cache-Control"] = f"public, max-age={ASSET_MAX_AGE}"
    return response

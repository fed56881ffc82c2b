"""GET /: the jobs page (static HTML and JavaScript, no build step) and its two files."""

from __future__ import annotations

from flask import Blueprint, Response, send_file

from api.hardening import JOBS_PAGE_CSP, page_policy
from api.limits import unlimited
from api.openapi import PlainText, documented
from api.static_files import PAGES, serve_asset

ASSETS = {
    "app.js": PAGES / "app.js",
    "app.css": PAGES / "app.css",
    # Named by the page itself, so the browser never asks for a missing /favicon.ico.
    "favicon.svg": PAGES / "favicon.svg",
}
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
    return serve_asset(ASSETS, name, ASSET_MAX_AGE)

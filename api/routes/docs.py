"""GET /api/v1/docs: Swagger UI over /api/v1/openapi.json, from the files its wheel ships."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, send_file

from api.hardening import DOCS_PAGE_CSP, page_policy
from api.limits import unlimited
from api.openapi import PlainText, documented
from api.static_files import PAGES, serve_asset

SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
# Every file the page loads; anything else is a 404 (no path is built from input).
ASSETS = {
    "swagger-ui.css": SWAGGER_DIST / "swagger-ui.css",
    "swagger-ui-bundle.js": SWAGGER_DIST / "swagger-ui-bundle.js",
    "favicon-32x32.png": SWAGGER_DIST / "favicon-32x32.png",
    "docs.js": PAGES / "docs.js",
}
ASSET_MAX_AGE = 3600

bp = Blueprint("docs", __name__, url_prefix="/api/v1/docs")


@bp.get("")
@unlimited
@documented(
    "Interactive API documentation (Swagger UI)",
    auth="none",
    responses={200: PlainText("text/html")},
    tags=("docs",),
)
def docs_page() -> Response:
    # Static HTML (scripts load from files, none inline): its own relaxed CSP.
    return page_policy(send_file(PAGES / "docs.html", mimetype="text/html"), DOCS_PAGE_CSP)


@bp.get("/assets/<name>")
@unlimited
@documented(
    "A file of the documentation page (Swagger UI's own build)",
    auth="none",
    responses={200: PlainText("application/octet-stream")},
    tags=("docs",),
)
def docs_asset(name: str) -> Response:
    return serve_asset(ASSETS, name, ASSET_MAX_AGE)

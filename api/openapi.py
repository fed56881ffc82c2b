"""The OpenAPI 3.1 document, generated from the request/response models views declare.

A view declares itself with `@documented(...)` (request body and query models,
response models by status, who may call it); the generator walks the app's URL
map, so the document covers exactly the routes that exist. A route without a
declaration is listed by `undocumented_routes` and fails the test suite.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.limits import is_unlimited
from api.responses import ErrorBody, OpenApiDocument

View = TypeVar("View", bound=Callable[..., Any])
# "metrics": the scrape token (METRICS_TOKEN), not a user's access token.
Auth = Literal["none", "user", "admin", "metrics"]

REF_TEMPLATE = "#/components/schemas/{model}"
_ATTR = "__openapi__"
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Malformed JSON",
    401: "Missing, invalid or expired bearer token",
    403: "Not allowed for this user",
    404: "Not found",
    409: "Conflict",
    413: "Body larger than 1 MiB",
    415: "Body is not application/json",
    422: "Validation failed; details name the fields",
    429: "Rate limited, or too many unfinished jobs",
    503: "A dependency is down or the queue is overloaded; see Retry-After",
}


@dataclass(frozen=True)
class PlainText:
    """A non-JSON response body (e.g. Prometheus text; an event stream's events by `schema`)."""

    media_type: str = "text/plain"
    schema: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Operation:
    """What a view accepts and answers, as declared next to it."""

    summary: str
    auth: Auth
    responses: dict[int, type[BaseModel] | PlainText]
    body: type[BaseModel] | None = None
    body_optional: bool = False
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Filled in from the view's @unlimited marker when the document is built.
    unlimited: bool = False


def documented(
    summary: str,
    *,
    auth: Auth,
    responses: dict[int, type[BaseModel] | PlainText],
    body: type[BaseModel] | None = None,
    body_optional: bool = False,
    query: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    tags: tuple[str, ...] = (),
) -> Callable[[View], View]:
    """Declare a view's models for the OpenAPI document (any position among its decorators)."""
    operation = Operation(summary, auth, responses, body, body_optional, query, errors, tags)

    def mark(view: View) -> View:
        setattr(view, _ATTR, operation)
        return view

    return mark


def operation_of(view: Callable[..., Any]) -> Operation | None:
    return getattr(view, _ATTR, None)


def undocumented_routes(app: Flask) -> list[str]:
    """Every `METHOD path` the app serves without a `@documented` declaration."""
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        if operation_of(app.view_functions[rule.endpoint]) is None:
            missing.extend(f"{method} {rule.rule}" for method in sorted(_methods(rule)))
    return missing


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route of `app`."""
    routes = []
    models: set[tuple[type[BaseModel], str]] = {(ErrorBody, "serialization")}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        operation = operation_of(view) if view is not None else None
        if operation is None:
            continue
        operation = dataclasses.replace(operation, unlimited=is_unlimited(view))
        routes.append((rule, operation))
        if operation.body is not None:
            models.add((operation.body, "validation"))
        for model in operation.responses.values():
            if isinstance(model, type):
                models.add((model, "serialization"))
    refs, definitions = models_json_schema(
        sorted(models, key=lambda item: (item[0].__name__, item[1])), ref_template=REF_TEMPLATE
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for rule, operation in routes:
        path = _openapi_path(rule.rule)
        for method in sorted(_methods(rule)):
            paths.setdefault(path, {})[method.lower()] = _operation(
                rule, method, operation, refs, schemas
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor API",
            "version": "1.0.0",
            "description": "Jobs are accepted with 202 and a task id; poll /api/v1/tasks/{id}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's METRICS_TOKEN (Prometheus scrapes only).",
                },
            },
        },
    }


def _methods(rule: Any) -> set[str]:
    return set(rule.methods or ()) - {"HEAD", "OPTIONS"}


def _openapi_path(rule: str) -> str:
    # Flask's `<converter:name>` becomes OpenAPI's `{name}`.
    parts = []
    for segment in rule.split("/"):
        if segment.startswith("<") and segment.endswith(">"):
            segment = "{" + segment[1:-1].split(":")[-1] + "}"
        parts.append(segment)
    return "/".join(parts)


def _operation(
    rule: Any,
    method: str,
    operation: Operation,
    refs: dict[tuple[type[BaseModel], str], dict[str, Any]],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": f"{rule.endpoint}.{method.lower()}",
        "summary": operation.summary,
        "tags": list(operation.tags) or [rule.endpoint.split(".")[0]],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(rule, name)}
        for name in sorted(rule.arguments)
    ]
    if operation.query is not None:
        parameters.extend(_query_parameters(operation.query, schemas))
    if parameters:
        doc["parameters"] = parameters
    if operation.body is not None:
        doc["requestBody"] = {
            "required": not operation.body_optional,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    if operation.auth == "metrics":
        doc["security"] = [{"metricsToken": []}]
    elif operation.auth != "none":
        doc["security"] = [{"bearerAuth": []}]
    doc["responses"] = _responses(rule, operation, refs)
    return doc


# A URL rule's variable as werkzeug writes it: <name>, <converter:name>, <converter(args):name>.
_RULE_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def _path_schema(rule: Any, name: str) -> dict[str, Any]:
    for variable in _RULE_VARIABLE.finditer(rule.rule):
        if variable["name"] == name and variable["converter"] == "int":
            return {"type": "integer"}
    return {"type": "string"}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def _responses(
    rule: Any, operation: Operation, refs: dict[tuple[type[BaseModel], str], dict[str, Any]]
) -> dict[str, Any]:
    statuses = set(operation.errors)
    if operation.body is not None:
        statuses |= {400, 413, 415, 422}
    if operation.query is not None:
        statuses.add(422)
    if operation.auth != "none":
        statuses.add(401)
    if operation.auth == "admin":
        statuses.add(403)
    if rule.arguments:
        statuses.add(404)
    if not operation.unlimited:
        statuses |= {429, 503}
    error_schema = refs[(ErrorBody, "serialization")]
    answers: dict[str, Any] = {}
    for status, model in sorted(operation.responses.items()):
        answers[str(status)] = _content(status, model, refs)
    for status in sorted(statuses - set(operation.responses)):
        answers[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": error_schema}},
        }
    return answers


def _content(
    status: int,
    model: type[BaseModel] | PlainText,
    refs: dict[tuple[type[BaseModel], str], dict[str, Any]],
) -> dict[str, Any]:
    description = _STATUS_TEXT.get(status, "Response")
    if isinstance(model, PlainText):
        return {
            "description": description,
            "content": {model.media_type: {"schema": dict(model.schema) or {"type": "string"}}},
        }
    return {
        "description": description,
        "content": {"application/json": {"schema": refs[(model, "serialization")]}},
    }


bp = Blueprint("openapi", __name__)


@bp.get("/api/v1/openapi.json")
@documented("This OpenAPI 3.1 document", auth="none", responses={200: OpenApiDocument})
def openapi_json() -> Response:
    # Built once per process: the routes and models do not change at run time.
    document = current_app.extensions.get("conveyor.openapi")
    if document is None:
        document = current_app.extensions["conveyor.openapi"] = build_document(current_app)
    return jsonify(document)

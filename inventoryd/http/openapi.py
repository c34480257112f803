"""The OpenAPI 3.1 document, generated from the route table and the msgspec types (never written by
hand), and the /docs page: Swagger UI from a Python package's bundled files, so it works offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from inventoryd import __version__, limits
from inventoryd.http import keys
from inventoryd.http.common import Route
from inventoryd.http.schemas import Problem

SWAGGER_UI_PATH: Path | None
try:
    from openapi_ui_bundles.swagger_ui import static_path as SWAGGER_UI_PATH
except ImportError:  # the docs page says so instead of failing the service
    SWAGGER_UI_PATH = None

_ERRORS = {
    400: "Malformed request: bad JSON, a bad query parameter or header",
    401: "No valid bearer token",
    403: "The token's role or owner may not do this",
    404: "No such event, reservation, ticket or route",
    409: "Refused by the rules: sold out, limit exceeded, hold expired, conflict …",
    413: f"Body larger than {limits.REQUEST_BODY_BYTES_MAX} bytes",
    415: "Body is not application/json",
    422: "Valid JSON, invalid content: `field` names what is wrong",
    429: "Rate limited: see Retry-After and RateLimit-* headers",
    503: "Overloaded or recovering: retry after Retry-After (with the same Idempotency-Key)",
}


def build(routes: tuple[Route, ...]) -> dict[str, Any]:
    types = {route.request_body for route in routes if route.request_body is not None}
    types |= {route.response_body for route in routes if route.response_body is not None}
    types.add(Problem)
    ordered = sorted(types, key=lambda kind: getattr(kind, "__name__", str(kind)))
    schemas, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(ordered, schemas, strict=True))
    problem = {"application/problem+json": {"schema": schema_of[Problem]}}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "tags": [_tag(route)]}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_parameters(route.path)
        ]
        parameters += [
            {"name": query.name, "in": "query", "required": False, "description": query.description, "schema": query.schema}
            for query in route.query
        ]
        if route.idempotent:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A retry with the same key and body gets the original answer and changes nothing",
                    "schema": {
                        "type": "string",
                        "pattern": f"^[ -~]{{1,{limits.IDEMPOTENCY_KEY_BYTES_MAX}}}$",
                        "description": "printable ASCII",
                    },
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if route.request_body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema_of[route.request_body]}}}
        success: dict[str, Any] = {"description": route.summary}
        if route.response_body is not None:
            success["content"] = {route.media_type: {"schema": schema_of[route.response_body]}}
        elif route.media_type != "application/json":
            success["content"] = {route.media_type: {"schema": {"type": "string"}}}
        if route.name in _LINKS:
            success["links"] = _LINKS[route.name]
        responses: dict[str, Any] = {str(route.success_status): success}
        if route.name == "create_reservation":
            responses["202"] = {"description": "Joined the waiting list", "content": success["content"]}
        for status in _error_statuses(route):
            responses[str(status)] = {"description": _ERRORS[status], "content": problem}
        operation["responses"] = responses
        operation["security"] = [] if route.public else [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "inventoryd",
            "version": __version__,
            "description": "Ticket inventory for on-sales: one actor per event, a group-committed PostgreSQL log.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A user's access token (JWT) or an API token `ivd_…` from `inventoryd token create`",
                }
            },
        },
    }


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


# What an answer's ids lead to: clients (and schemathesis' stateful phase) follow these.
_EVENT_ID = "$response.body#/id"
_LINKS: dict[str, dict[str, Any]] = {
    "create_event": {
        name: _link(name, event_id=_EVENT_ID)
        for name in ("get_event", "create_reservation", "get_availability", "get_report", "event_reservations", "update_event")
    },
    "create_reservation": {
        name: _link(name, reservation_id="$response.body#/id")
        for name in ("get_reservation", "confirm_reservation", "cancel_reservation")
    },
    "confirm_reservation": {
        name: _link(name, ticket_id="$response.body#/tickets/0/id") for name in ("get_ticket", "check_in_ticket")
    },
}


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _tag(route: Route) -> str:
    if route.path.startswith("/v1/auth") or route.path.startswith("/v1/users/me"):
        return "accounts"
    if route.path.startswith("/v1/reservations") or route.path.startswith("/v1/tickets") or "reservations" in route.path:
        return "reservations"
    if route.path.startswith("/v1/events"):
        return "events"
    return "operations"


def _error_statuses(route: Route) -> list[int]:
    if not route.path.startswith("/v1/"):
        return [503] if route.name == "readyz" else []
    statuses = {429, 503}
    if route.query or route.idempotent:
        statuses.add(400)
    if route.path.startswith("/v1/auth/"):
        statuses.add(401)  # wrong password, spent refresh token
    if not route.public:
        statuses |= {401, 403}
    if "{" in route.path:
        statuses.add(404)
    if route.method in ("POST", "PATCH"):
        statuses |= {400, 409, 413, 415, 422}
    return sorted(statuses)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[keys.OPENAPI], content_type="application/json")


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>inventoryd API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
_DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
"""
# The docs page runs scripts and styles from this origin only.
_DOCS_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


async def docs(request: web.Request) -> web.Response:
    if SWAGGER_UI_PATH is None:
        return web.Response(status=503, text="the docs page needs the openapi-ui-bundles package; /openapi.json works")
    return web.Response(text=_DOCS_PAGE, content_type="text/html", headers={"Content-Security-Policy": _DOCS_POLICY})


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_INIT, content_type="text/javascript")


def add_static(app: web.Application) -> None:
    if SWAGGER_UI_PATH is not None:
        app.router.add_static("/docs/static", SWAGGER_UI_PATH, name="docs_static")
